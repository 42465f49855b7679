"""`cqrs-console serve`'s supervision of its worker child, with real child processes (plain Python
programs standing in for `cqrs-console worker`, which needs a database), and the setting that
decides where the projections run."""

from __future__ import annotations

import os
import sys
import textwrap

import psutil
import pytest
from waiting import wait_until

from cqrs_core.cli.serve import WorkerSupervisor, what_keeps_running
from cqrs_core.infra.config import DEFAULT_PROJECTIONS_IN, SettingsError, load_settings


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_that_exits_is_started_again_with_a_growing_delay_and_a_log_line(caplog):
    supervisor = WorkerSupervisor(python("import sys; sys.exit(3)"), first_delay=0.05, max_delay=0.2)
    caplog.set_level("WARNING", logger="cqrs_core.cli.serve")
    supervisor.start()
    try:
        wait_until(lambda: supervisor.starts >= 4, 30, "four starts")
    finally:
        supervisor.stop()
    lines = [r.getMessage() for r in caplog.records if "stopped unexpectedly" in r.getMessage()]
    assert len(lines) >= 3 and all("(exit code 3); starting it again in" in line for line in lines)
    delays = [float(line.rsplit(" in ", 1)[1].removesuffix(" s")) for line in lines]
    assert delays[:3] == [0.05, 0.1, 0.2] and set(delays[3:]) <= {0.2}  # doubled, then capped


def test_the_child_runs_in_a_process_group_of_its_own_and_stop_ends_it_with_sigterm():
    supervisor = WorkerSupervisor(python("import time; time.sleep(60)"))
    supervisor.start()
    pid = wait_until(lambda: supervisor.pid, 10, "the child to start")
    try:
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert psutil.Process(pid).ppid() == os.getpid()
    finally:
        ended = supervisor.stop()
    assert ended == "signal SIGTERM" and supervisor.pid is None and gone(pid)
    assert supervisor.starts == 1  # a stop is not an unexpected exit: nothing started again


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path):
    ready = tmp_path / "ignoring-sigterm"
    supervisor = WorkerSupervisor(
        python(f"""
            import pathlib, signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        """),
        stop_timeout=0.5,
    )
    supervisor.start()
    try:
        pid = wait_until(lambda: supervisor.pid, 10, "the child to start")
        wait_until(ready.exists, 10, "the child to ignore SIGTERM")
    finally:
        ended = supervisor.stop()
    assert ended == "signal SIGKILL" and gone(pid)


@pytest.fixture
def clean_env(monkeypatch):
    for name in [k for k in os.environ if k.startswith("CQRS_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({}, DEFAULT_PROJECTIONS_IN),
        ({"CQRS_RUN_PROJECTIONS": "true"}, "app"),
        ({"CQRS_RUN_PROJECTIONS": "false"}, "none"),
        ({"CQRS_PROJECTIONS_IN": "Worker"}, "worker"),
        ({"CQRS_PROJECTIONS_IN": "false"}, "none"),
        ({"CQRS_PROJECTIONS_IN": "app", "CQRS_RUN_PROJECTIONS": "1"}, "app"),
        ({"CQRS_PROJECTIONS_IN": "worker", "CQRS_RUN_PROJECTIONS": "false"}, "worker"),
    ],
)
def test_where_the_projections_run(clean_env, env, where):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert load_settings().projections_in == where


def test_the_default_is_the_worker_until_the_benchmark_says_otherwise():
    assert DEFAULT_PROJECTIONS_IN == "worker"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"CQRS_PROJECTIONS_IN": "worker", "CQRS_RUN_PROJECTIONS": "true"},
            "Invalid settings: CQRS_PROJECTIONS_IN=worker contradicts CQRS_RUN_PROJECTIONS=true; "
            "set CQRS_PROJECTIONS_IN only",
        ),
        (
            {"CQRS_PROJECTIONS_IN": "app", "CQRS_RUN_PROJECTIONS": "no"},
            "Invalid settings: CQRS_PROJECTIONS_IN=app contradicts CQRS_RUN_PROJECTIONS=false; "
            "set CQRS_PROJECTIONS_IN only",
        ),
        (
            {"CQRS_PROJECTIONS_IN": "elsewhere"},
            "Invalid setting CQRS_PROJECTIONS_IN: Input should be 'worker', 'app' or 'none'",
        ),
    ],
)
def test_a_contradiction_or_an_unknown_place_is_one_line(clean_env, env, line):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == line


def test_the_line_on_the_way_out_names_what_keeps_running(tmp_path):
    external = load_settings(database_url="postgresql+psycopg2://console:s3cret@db.example.org/research")
    line = what_keeps_running(external, worker_stopped=True)
    assert line.startswith("Stopped the console and its projection worker; the database at ")
    assert "db.example.org" in line and "s3cret" not in line

    nothing = load_settings(data_dir=tmp_path / "data")
    assert what_keeps_running(nothing, worker_stopped=False) == (
        f"Stopped the console; no embedded PostgreSQL server is running for {(tmp_path / 'data').resolve()}."
    )
