"""Invalid configuration stops start-up with one line that names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cqrs_core.infra.config import Settings, SettingsError, load_settings

BAD_VALUES = [
    ("CQRS_DATABASE_URL", "mysql://x"),
    ("CQRS_DATABASE_URL", "postgresql://postgres@localhost/db"),  # the driver must be explicit
    ("CQRS_READ_DATABASE_URL", "sqlite:///x.db"),
    ("CQRS_COMMAND_TIMEOUT", "-1"),
    ("CQRS_QUERY_TIMEOUT", "soon"),
    ("CQRS_CHECKPOINT_INTERVAL", "0"),
    ("CQRS_DATABASE_NAME", "1; DROP DATABASE x"),
    ("CQRS_AUTH_MODE", "sometimes"),
    ("CQRS_LOG_LEVEL", "LOUD"),
    ("CQRS_VIEW_REFRESH_SECONDS", "inf"),
    ("CQRS_LAG_SAMPLE_SECONDS", "nan"),
    ("CQRS_CACHE_TTL_SECONDS", "1e300"),
    ("CQRS_DATA_DIR", ""),
    ("CQRS_DATA_DIR", "   "),
    ("CQRS_METRICS_ADDRESS", "0.0.0.0"),  # /metrics has no sign-in: loopback only
    ("CQRS_METRICS_ADDRESS", "10.1.2.3"),
    ("CQRS_METRICS_ADDRESS", "metrics.example.org"),
    ("CQRS_DIRECT_DATABASE_URL", "postgresql://postgres@db.example.org/research"),
    ("CQRS_PREPARED_STATEMENTS", "sometimes"),
]

FLOAT_SETTINGS = [name for name, f in Settings.model_fields.items() if f.annotation in (float, "float")]


@pytest.fixture
def clean_env(monkeypatch):
    for name in [k for k in os.environ if k.startswith("CQRS_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_invalid_variable_fails_with_one_line_naming_it(clean_env, variable, value):
    clean_env.setenv(variable, value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    message = str(raised.value)
    assert message.startswith(f"Invalid setting {variable}:")
    assert "\n" not in message


def test_defaults_need_no_configuration(clean_env):
    settings = load_settings()

    assert settings.database_url is None  # embedded PostgreSQL
    assert settings.checkpoint_interval == 50


def test_empty_database_url_means_embedded(clean_env):
    clean_env.setenv("CQRS_DATABASE_URL", "")

    assert load_settings().database_url is None


def test_a_direct_url_without_a_pooled_one_stops_start_up_in_one_line(clean_env):
    clean_env.setenv("CQRS_DIRECT_DATABASE_URL", "postgresql+psycopg2://owner@db.example.org/research")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    message = str(raised.value)
    assert message.startswith("Invalid settings: CQRS_DIRECT_DATABASE_URL is set without CQRS_DATABASE_URL")
    assert "\n" not in message


POOLER = "postgresql+psycopg2://cqrs_console@127.0.0.1:6432/research"
SERVER = "postgresql+psycopg2://owner@db.example.org:5432/research"


@pytest.mark.parametrize(
    ("direct", "setting", "behind_pooler", "prepares"),
    [
        (None, None, False, True),
        (SERVER, None, True, False),  # auto: no PREPARE through a pooler
        (POOLER, None, False, True),  # the same URL twice: no pooler in between
        (SERVER, "ON", True, True),  # asked for (it fails behind pgbouncer: test_pgbouncer.py)
        (None, " off ", False, False),
    ],
)
def test_a_direct_url_says_the_database_url_is_a_pooler_and_turns_prepare_off_unless_asked(
    clean_env, direct, setting, behind_pooler, prepares
):
    clean_env.setenv("CQRS_DATABASE_URL", POOLER)
    if direct:
        clean_env.setenv("CQRS_DIRECT_DATABASE_URL", direct)
    if setting:
        clean_env.setenv("CQRS_PREPARED_STATEMENTS", setting)

    settings = load_settings()

    assert settings.behind_pooler is behind_pooler
    assert settings.prepares_statements(settings.behind_pooler) is prepares


@pytest.mark.parametrize(
    ("variable", "value"), [("CQRS_DATABASE_URL", "mysql://x"), ("CQRS_COMMAND_TIMEOUT", "-1")]
)
def test_cli_prints_the_line_and_exits_2_without_a_traceback(variable, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env[variable] = value

    result = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "health"], capture_output=True, text=True, env=env, timeout=60
    )

    assert result.returncode == 2
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"Invalid setting {variable}:" in lines[0]
    assert "Traceback" not in result.stderr


def test_every_setting_is_documented_in_the_readme_with_its_default():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = {}
    for line in readme.splitlines():
        if line.startswith("| `CQRS_"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            documented[cells[0].strip("`")] = cells[1]

    expected = {
        f"CQRS_{name.upper()}": "unset" if field.default is None else f"`{field.default}`"
        for name, field in Settings.model_fields.items()
    }
    assert documented == expected


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e309"])
def test_no_float_setting_accepts_infinity_or_nan(clean_env, name, value):
    clean_env.setenv(f"CQRS_{name.upper()}", value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert str(raised.value).startswith(f"Invalid setting CQRS_{name.upper()}:")


@pytest.mark.parametrize(
    "name",
    [
        "view_refresh_seconds",
        "lag_sample_seconds",
        "cache_ttl_seconds",
        "stale_lag_threshold_seconds",
        "lag_retention_minutes",
    ],
)
def test_intervals_have_an_upper_bound(clean_env, name):
    clean_env.setenv(f"CQRS_{name.upper()}", "1e300")  # finite, but overflows a timedelta

    with pytest.raises(SettingsError):
        load_settings()


def test_a_file_as_data_dir_fails_with_one_line_naming_it(clean_env, tmp_path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    for value in (a_file, a_file / "below"):
        clean_env.setenv("CQRS_DATA_DIR", str(value))

        with pytest.raises(SettingsError) as raised:
            load_settings()

        assert str(raised.value) == f"Invalid setting CQRS_DATA_DIR: {a_file} is a file, not a directory"


def cli(env_changes: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env["CQRS_DATABASE_URL"] = "postgresql+psycopg2://nobody@127.0.0.1:1/none"  # never reached
    env.update(env_changes)
    return subprocess.run(
        [sys.executable, "-m", "cqrs_core", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("variable", "value", "args"),
    [
        ("CQRS_VIEW_REFRESH_SECONDS", "inf", ["worker"]),
        ("CQRS_LAG_SAMPLE_SECONDS", "inf", ["worker"]),
        ("CQRS_DATA_DIR", "", ["db", "start"]),
    ],
)
def test_bad_settings_stop_commands_with_one_line(variable, value, args):
    result = cli(
        {variable: value, **({"CQRS_DATABASE_URL": ""} if variable == "CQRS_DATA_DIR" else {})}, *args
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and f"Invalid setting {variable}:" in lines[0], result.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "0", "soon"])
@pytest.mark.parametrize("flag", ["--duration", "--rate"])
def test_demo_load_refuses_an_unusable_number_in_one_line(flag, value):
    args = {"--duration": "1", "--rate": "1", flag: value}
    result = cli({}, "demo", "load", *[part for item in args.items() for part in item])

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {flag}:" in errors[0], result.stderr


@pytest.mark.parametrize("value", ["Mars/Olympus_Mons", "../../etc/passwd", "Europe/"])
def test_an_unknown_time_zone_stops_start_up_in_one_line(clean_env, value):
    clean_env.setenv("CQRS_TIME_ZONE", value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert str(raised.value).startswith("Invalid setting CQRS_TIME_ZONE:")
    assert "is not an IANA time zone name" in str(raised.value)


def test_a_known_time_zone_is_kept(clean_env):
    clean_env.setenv("CQRS_TIME_ZONE", "Europe/Paris")
    assert load_settings().time_zone == "Europe/Paris"


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_the_metrics_endpoint_may_listen_on_loopback_addresses(clean_env, address):
    clean_env.setenv("CQRS_METRICS_ADDRESS", address)

    assert load_settings().metrics_address in {address, address.strip("[]")}
