"""Worker processes: exactly-once after kill -9, one runner per projection, standby take-over,
clean stop on SIGTERM, and the command-line verbs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import text
from waiting import wait_until
from workflow_histories import bulk_workload

from cqrs_core.infra.config import load_settings
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine.locks import RUNNER_NAMESPACE, lock_key
from cqrs_core.projections.engine.verify import verify

WORKER = """
import logging, sys
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.projections.engine.runtime import ProjectionRuntime
logging.basicConfig(level=logging.WARNING)
url = sys.argv[1]
settings = load_settings(database_url=url, checkpoint_interval=int(sys.argv[2]), projection_poll_seconds=0.2,
                         lag_sample_seconds=0.5)
sys.exit(ProjectionRuntime(make_engine(url), settings).run_until_stopped())
"""

CLI = """
import argparse, sys
from cqrs_core.cli.projections import add_parsers
parser = argparse.ArgumentParser(prog="cqrs-console")
add_parsers(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


@pytest.fixture
def observer(engine, db_url):
    """A manager that only looks (status, verify); it never runs a batch."""
    m = ProjectionManager(engine, load_settings(database_url=db_url))
    yield m
    m.close()


def start_worker(db_url, interval=20):
    return subprocess.Popen([sys.executable, "-c", WORKER, db_url, str(interval)])


def owner_of(proc):
    return f"{socket.gethostname()}:{proc.pid}"


def wait_for(predicate, timeout, what):
    """Waits until `predicate()` holds; returns the moment it did."""
    wait_until(predicate, timeout, what)
    return time.monotonic()


def checkpoints(engine):
    with engine.connect() as c:
        return dict(c.execute(text("SELECT name, events_applied FROM projection_checkpoints")).all())


def caught_up(observer):
    return all(s.lag_events == 0 for s in observer.status())


def runner_lock_holders(engine):
    """Backend pid holding each projection's runner lock, from pg_locks."""
    keys = {lock_key(n): n for n in PROJECTION_NAMES}
    with engine.connect() as c:
        rows = c.execute(
            text("""SELECT objid::bigint AS key, pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                    AND classid = :ns AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""),
            {"ns": RUNNER_NAMESPACE},
        ).all()
    holders: dict[str, list[int]] = {}
    for key, pid in rows:
        holders.setdefault(keys[key], []).append(pid)
    return holders


def test_worker_killed_between_batch_and_checkpoint_applies_every_event_exactly_once(
    store, observer, engine, db_url
):
    total = bulk_workload(store, 300, tasks=6)
    # Hold every batch open between its read-model writes and its checkpoint update, so the kill
    # lands there: the whole transaction, read-model rows included, must roll back.
    with engine.begin() as c:
        c.exec_driver_sql(
            "CREATE FUNCTION dawdle() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$;"
            "CREATE TRIGGER dawdle BEFORE UPDATE ON projection_checkpoints FOR EACH ROW EXECUTE FUNCTION dawdle();"
        )
    worker = start_worker(db_url)
    try:
        wait_for(lambda: min(checkpoints(engine).values()) >= 400, 30, "the worker to apply some batches")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    applied = checkpoints(engine)
    assert all(0 < n < total for n in applied.values()), applied
    report = verify(engine)  # the rows match the checkpoints exactly: nothing half-applied
    assert report.ok, "\n".join(report.lines())

    with engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER dawdle ON projection_checkpoints")
    restarted = start_worker(db_url, interval=50)
    try:
        wait_for(lambda: caught_up(observer), 60, "the restarted worker to catch up")
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(15) == 0
    finally:
        restarted.kill()
    assert checkpoints(engine) == dict.fromkeys(PROJECTION_NAMES, total)
    report = verify(engine)
    assert report.ok, "\n".join(report.lines())
    assert {s.state for s in observer.status()} == {"stopped"}


def test_two_workers_never_run_one_projection_and_the_standby_takes_over(store, observer, engine, db_url):
    first = start_worker(db_url)
    second = None
    try:
        wait_for(
            lambda: {s.owner for s in observer.status()} == {owner_of(first)},
            20,
            "the first worker to take every projection",
        )
        second = start_worker(db_url)
        time.sleep(1.5)  # the standby polls the locks several times meanwhile
        total = bulk_workload(store, 150, tasks=4)
        for _ in range(10):
            holders = runner_lock_holders(engine)
            assert set(holders) == set(PROJECTION_NAMES) and all(len(p) == 1 for p in holders.values()), (
                holders
            )
            assert {s.owner for s in observer.status()} == {owner_of(first)}
            time.sleep(0.1)  # samples spread over a second: the standby never takes over meanwhile
        wait_for(lambda: caught_up(observer), 30, "the first worker to catch up")
        assert checkpoints(engine) == dict.fromkeys(PROJECTION_NAMES, total)

        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(10)
        taken_at = wait_for(
            lambda: {s.owner for s in observer.status()} == {owner_of(second)}, 15, "the standby to take over"
        )
        assert taken_at - killed_at < 5.0
        more = bulk_workload(store, 50, tasks=4)
        wait_for(lambda: caught_up(observer), 30, "the standby to apply new events")
        assert checkpoints(engine) == dict.fromkeys(PROJECTION_NAMES, total + more)
        report = verify(engine)
        assert report.ok, "\n".join(report.lines())

        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
        assert {s.state for s in observer.status()} == {"stopped"}
        assert runner_lock_holders(engine) == {}
    finally:
        first.kill()
        if second is not None:
            second.kill()


def run_cli(db_url, *argv):
    env = {**os.environ, "CQRS_DATABASE_URL": db_url}
    return subprocess.run(
        [sys.executable, "-c", CLI, *argv], env=env, capture_output=True, text=True, timeout=60
    )


def test_command_line_worker_once_status_verify_rebuild_and_parked(store, engine, db_url):
    total = bulk_workload(store, 20, tasks=3)
    once = run_cli(db_url, "worker", "--once")
    assert once.returncode == 0, once.stderr
    assert f"{len(PROJECTION_NAMES) * total} events applied" in once.stdout

    status = run_cli(db_url, "projections", "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert set(rows) == set(PROJECTION_NAMES)
    assert all(r["position"] == r["head"] and r["lag_events"] == 0 for r in rows.values())
    table = run_cli(db_url, "projections", "status")
    assert table.returncode == 0 and "workflow_summary" in table.stdout and "lag s" in table.stdout

    assert run_cli(db_url, "verify").returncode == 0
    with engine.begin() as c:
        c.execute(
            text(
                "UPDATE workflow_summary SET title = 'tampered' WHERE ctid = (SELECT min(ctid) FROM workflow_summary)"
            )
        )
    drift = run_cli(db_url, "verify")
    assert drift.returncode == 1 and "title: live 'tampered'" in drift.stdout and "DRIFT" in drift.stdout

    rebuilt = run_cli(db_url, "projections", "rebuild", "workflow_summary")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "100%" in rebuilt.stderr and "rows changed: workflow_summary 2" in rebuilt.stdout
    assert run_cli(db_url, "verify").returncode == 0

    assert run_cli(db_url, "projections", "pause", "task_summary").returncode == 0
    paused = json.loads(run_cli(db_url, "projections", "status", "--json").stdout)
    assert {r["name"]: r["state"] for r in paused}["task_summary"] == "paused"
    assert run_cli(db_url, "projections", "resume", "task_summary").returncode == 0
    parked = run_cli(db_url, "parked", "list", "--json")
    assert parked.returncode == 0 and json.loads(parked.stdout) == []
    assert run_cli(db_url, "projections", "retry-parked").returncode == 0
