"""Invalid configuration stops start-up with one line that names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cqrs_core.config import Settings, SettingsError, load_settings

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
]


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


@pytest.mark.parametrize(("variable", "value"), [("CQRS_DATABASE_URL", "mysql://x"), ("CQRS_COMMAND_TIMEOUT", "-1")])
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
