"""Shared helpers of the fault-injection tests (tests/integration/test_faults_*.py): worker
subprocesses that are always cleaned up, kill -9, bounded waits, and the exactly-once checks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from waiting import wait_until

from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.projections.engine.locks import RUNNER_NAMESPACE, lock_key
from cqrs_core.projections.engine.verify import verify

ROOT = Path(__file__).resolve().parents[2]

# How sessions show up in pg_stat_activity (application_name): the tests' own observer, the
# batches of `python -m cqrs_core worker` (cli/projections.py), the runner-lock session of a
# ProjectionManager (projections/engine/locks.py). The service's names are asked of its engines.
OBSERVER_APP = "fault-test observer"
WORKER_APP_LIKE = "%worker%"
LOCKS_APP_LIKE = "%projection locks%"


def cli_env(db_url: str, **settings: Any) -> dict[str, str]:
    """The environment of a `python -m cqrs_core ...` child: the test database plus CQRS_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env["CQRS_DATABASE_URL"] = db_url
    env["PYTHONPATH"] = str(ROOT)
    for key, value in settings.items():
        env[f"CQRS_{key.upper()}"] = str(value)
    return env


class Processes:
    """Starts children with output in log files and kills every one still alive on exit
    (`with Processes(tmp_path) as procs:`), so a failing test never leaves a worker behind."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}
        self.killed = 0

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def start(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        path = self.log_dir / f"{name}-{len(self.procs)}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append(proc)
        self.logs[proc.pid] = path
        return proc

    def cqrs(self, db_url: str, *argv: str, name: str | None = None, **settings: Any) -> subprocess.Popen:
        """`python -m cqrs_core *argv` against `db_url`."""
        return self.start(
            [sys.executable, "-m", "cqrs_core", *argv], cli_env(db_url, **settings), name or argv[0]
        )

    def worker(self, db_url: str, **settings: Any) -> subprocess.Popen:
        defaults = {"checkpoint_interval": 10, "projection_poll_seconds": 0.2, "lag_sample_seconds": 0.5}
        return self.cqrs(db_url, "worker", **{**defaults, **settings})

    def kill9(self, proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.killed += 1

    def output(self, proc: subprocess.Popen) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]


def owner_of(proc: subprocess.Popen) -> str:
    """The owner string a ProjectionManager in `proc` writes (host:pid)."""
    return f"{socket.gethostname()}:{proc.pid}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until `predicate()` is truthy; returns the seconds it took, fails the test after `timeout`."""
    started = time.monotonic()
    wait_until(predicate, timeout, what, interval)
    return time.monotonic() - started


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as c:
        return c.execute(text(sql), params).scalar_one()


def owners(engine: Engine) -> dict[str, str | None]:
    """The owner of each projection as its row says (host:pid), None when its heartbeat is stale."""
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT name, CASE WHEN heartbeat_at > clock_timestamp() - interval '5 seconds' THEN owner END"
                " FROM projection_control"
            )
        ).all()
    return dict(rows)


def runner_lock_holders(engine: Engine) -> dict[str, list[int]]:
    """Backend pids holding each projection's runner advisory lock, from pg_locks."""
    keys = {lock_key(n): n for n in PROJECTION_NAMES}
    with engine.connect() as c:
        rows = c.execute(
            text("""SELECT objid::bigint AS key, pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                    AND classid = :ns AND objsubid = 2
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""),
            {"ns": RUNNER_NAMESPACE},
        ).all()
    holders: dict[str, list[int]] = {}
    for key, pid in rows:
        if key in keys:
            holders.setdefault(keys[key], []).append(pid)
    return holders


EXACTLY_ONCE_SQL = """
SELECT c.name, c.events_applied,
       (SELECT count(*) FROM events e WHERE (e.txid, e.position) <= (c.last_txid, c.last_position)) AS passed,
       (SELECT count(*) FROM events) AS total
FROM projection_checkpoints c ORDER BY c.name
"""


def exactly_once(engine: Engine) -> dict[str, tuple[int, int, int]]:
    """Per projection: (events_applied, events at or before its checkpoint, events in the log),
    read in one snapshot.

    The set of events at or before a checkpoint never changes once the checkpoint is written
    (a later commit has a txid above the horizon the batch read under), and every batch moves the
    counter and the checkpoint in one transaction. So with nothing parked the first two numbers
    are equal exactly when no event was applied twice (counter too high) or lost (too low)."""
    with engine.connect() as c:
        rows = c.execute(text(EXACTLY_ONCE_SQL)).all()
    return {r.name: (int(r.events_applied), int(r.passed), int(r.total)) for r in rows}


def assert_exactly_once(engine: Engine, *, caught_up: bool = False) -> dict[str, tuple[int, int, int]]:
    state = exactly_once(engine)
    assert set(state) == set(PROJECTION_NAMES), state
    wrong = {n: s for n, s in state.items() if s[0] != s[1]}
    assert not wrong, (
        f"events_applied != events at or before the checkpoint (applied, passed, total): {wrong}"
    )
    if caught_up:
        behind = {n: s for n, s in state.items() if s[1] != s[2]}
        assert not behind, f"not caught up (applied, passed, total): {behind}"
    assert scalar(engine, "SELECT count(*) FROM parked_events") == 0, "an event was parked"
    return state


def assert_verified(engine: Engine) -> int:
    """`verify` passes; returns the events it replayed (summed over the projections)."""
    report = verify(engine)
    assert report.ok, "\n".join(report.lines())
    with engine.connect() as c:
        return int(
            c.execute(
                text(
                    "SELECT COALESCE(sum((SELECT count(*) FROM events e WHERE (e.txid, e.position) <= (c.last_txid, c.last_position))), 0)"
                    " FROM projection_checkpoints c"
                )
            ).scalar_one()
        )


def caught_up(engine: Engine) -> bool:
    """Every projection's checkpoint is at the last committed event."""
    state = exactly_once(engine)
    return all(passed == total for _, passed, total in state.values())


def application_names(service: Any) -> list[str]:
    """The application_name of every engine the service uses (asked of the sessions themselves)."""
    engines = {
        id(e): e
        for e in (getattr(service, a, None) for a in ("engine", "read_engine", "command_engine"))
        if e is not None
    }
    names = set()
    for engine in engines.values():
        with engine.connect() as c:
            names.add(c.execute(text("SELECT current_setting('application_name')")).scalar_one())
    return sorted(names)


def checked_out(service: Any) -> int:
    """Connections of the service's pools in use right now."""
    engines = {
        id(e): e
        for e in (getattr(service, a, None) for a in ("engine", "read_engine", "command_engine"))
        if e is not None
    }
    return sum(e.pool.checkedout() for e in engines.values())


def backends(engine: Engine, application_names: list[str]) -> list[Any]:
    """This database's sessions of `application_names` (pid, state, wait_event_type, query, has_xid),
    seen from another session."""
    with engine.connect() as c:
        return c.execute(
            text(
                """SELECT pid, application_name, state, wait_event_type, wait_event, left(query, 200) AS query,
                      backend_xid IS NOT NULL AS has_xid
               FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = ANY(CAST(:apps AS text[]))
                 AND pid <> pg_backend_pid()"""
            ),
            {"apps": list(application_names)},
        ).all()
