"""Faults and concurrency — database restart (issue 8).

On a PostgreSQL server of its own (the session's shared server is never touched), the test runs
a command load and a ProjectionRuntime in this process, stops the server (`pg_ctl stop -m fast`)
in the middle of the load, keeps it down for about two seconds and starts it again. Clients retry
a failed command with the same command id, as a person pressing the button again would.

* every failure is an InfrastructureError (or TimeoutError_), with a message free of URLs and SQL;
* nothing is half-applied: each command_log row has exactly its events and every event its
  command_log row; a command whose attempt failed was either not applied at all (its retry is a
  fresh execution) or applied whole (only its acknowledgement was lost: the retry is a duplicate);
* the same service and runtime objects, and a standby `python -m cqrs_core worker` process,
  reconnect by themselves and catch up; health is unhealthy while the server is down and healthy
  again after; `verify` passes;
* the runtime's alert evaluator (the leader: it started first) raises "database unreachable"
  while the server is down, announces it then, and writes it after the restart with the time it
  decided it (inside the outage); the alert then resolves by itself.

Reproduce: .venv/bin/pytest -s tests/integration/test_faults_database_restart.py
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fault_tools import (
    LOCKS_APP_LIKE,
    OBSERVER_APP,
    Processes,
    assert_exactly_once,
    assert_verified,
    caught_up,
    scalar,
    wait_for,
)
from sqlalchemy import text

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine, start_embedded_server, stop_embedded_server
from cqrs_core.infra.errors import CQRSError, InfrastructureError, TimeoutError_
from cqrs_core.ops.health import check_health
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.tools.workload.plans import WorkloadGenerator
from cqrs_core.write.command_bus import CommandResult
from cqrs_core.write.commands import ALERT_COMMANDS

pytestmark = pytest.mark.slow

DOWN_SECONDS = 2.0
LOAD_THREADS = 3
RETRY_DEADLINE = 60.0  # a thread gives up retrying one command after this long
EXPECTED = (InfrastructureError, TimeoutError_)


@dataclass
class Attempt:
    command_id: uuid.UUID
    started: float
    ended: float
    error: CQRSError


@dataclass
class Load:
    """Threads sending each workflow's commands in order; a failed command is retried with the
    same command id until it succeeds (or an unexpected error ends that workflow)."""

    service: object
    threads: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: dict[uuid.UUID, CommandResult] = field(default_factory=dict)
    failures: list[Attempt] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    gave_up: list[uuid.UUID] = field(default_factory=list)
    succeeded_at: list[float] = field(default_factory=list)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(700 + i,), name=f"load-{i}", daemon=True)
            t.start()
            self.workers.append(t)

    def join(self, timeout: float) -> None:
        self.stop.set()
        for t in self.workers:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.workers), "a load thread is stuck"

    def ok_since(self, moment: float) -> int:
        with self.lock:
            return sum(1 for t in self.succeeded_at if t >= moment)

    def _run(self, seed: int) -> None:
        generator = WorkloadGenerator(seed, backfill=False)
        while not self.stop.is_set():
            for command in generator.workflow().commands:
                if not self._until_done(command):
                    break
                if self.stop.is_set():
                    return
                time.sleep(0.005)  # the load's pace between commands

    def _until_done(self, command) -> bool:
        deadline = time.monotonic() + RETRY_DEADLINE
        while True:
            started = time.monotonic()
            try:
                result = self.service.execute_command(command)
            except CQRSError as exc:
                with self.lock:
                    self.failures.append(Attempt(command.command_id, started, time.monotonic(), exc))
                    if not isinstance(exc, EXPECTED):
                        self.unexpected.append(
                            f"{type(command).__name__}: {type(exc).__name__}: {exc.user_message}"
                        )
                        return False
                if time.monotonic() > deadline:
                    with self.lock:
                        self.gave_up.append(command.command_id)
                    return False
                time.sleep(0.05)  # a client's pause before it retries
                continue
            except Exception as exc:  # not a typed error at all: the worst outcome
                with self.lock:
                    self.unexpected.append(f"{type(command).__name__}: untyped {type(exc).__name__}: {exc}")
                return False
            with self.lock:
                self.results[command.command_id] = result
                self.succeeded_at.append(time.monotonic())
            return True


def test_database_restart_during_load_fails_cleanly_and_everything_reconnects(tmp_path):
    data_dir = Path(tempfile.mkdtemp(prefix="cqrs-restart-"))
    service = runtime = observer = load = None
    procs = Processes(tmp_path / "logs")
    started = time.monotonic()
    try:
        url = start_embedded_server(data_dir, "restart")
        settings = load_settings(
            database_url=url,
            checkpoint_interval=20,
            projection_poll_seconds=0.2,
            lag_sample_seconds=0.5,
            alert_evaluate_seconds=0.2,
            alert_database_unreachable_hold_seconds=0,  # the outage is short: the first look raises it
        )
        told: list[tuple[float, object]] = []  # (when, AlertNotice)
        service = (
            CQRSServiceBuilder(settings)
            .with_alert_notify(lambda notice: told.append((time.monotonic(), notice)))
            .with_database_url(url)
            .with_command_timeout(10)
            .with_query_timeout(5)
            .with_rate_limit(1e9, 10**9)
            .with_pool_size(5)
            .build()
        )
        observer = make_engine(url, pool_size=2, application_name=OBSERVER_APP)
        with observer.begin() as c:  # longer write transactions: the stop lands inside some of them
            c.exec_driver_sql(
                "CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(random() * 0.02); RETURN NULL; END $$;"
                "CREATE TRIGGER linger AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION linger();"
            )
        runtime = service.projection_runtime()  # the projections, their jobs and the alert evaluator
        runtime.start()
        wait_for(
            lambda: runtime.manager.held() == set(PROJECTION_NAMES), 30, "the runtime to take the projections"
        )
        # A standby worker process: it must live through the restart too. Its alert evaluator would
        # first run in an hour, so the outage's alert is this process's (its evaluator leads).
        worker = procs.worker(url, alert_evaluate_seconds=3600)
        load = Load(service, LOAD_THREADS)
        load.start()
        wait_for(
            lambda: load.ok_since(0) >= 150 and lock_sessions(observer) == 2,
            60,
            "the load to get going and the worker to poll the runner locks",
        )
        assert check_health(service.engine).healthy

        # ---- the server goes away in the middle of the load
        down_at = time.monotonic()
        down_wall = datetime.now(UTC)
        assert stop_embedded_server(data_dir)
        stopped_at = time.monotonic()
        down_health = check_health(service.engine)
        assert down_health.status == "unhealthy", down_health
        assert down_health.component("database").status == "unhealthy"
        with pytest.raises(EXPECTED) as refused_query:
            service.execute_query(QueryFactory().get_workflow_list(), cache=False)
        # The server stays down DOWN_SECONDS while the load goes on: the outage is the behaviour.
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - stopped_at)))
        assert load.ok_since(stopped_at + 0.5) == 0, "commands succeeded while the server was down?"

        # ---- and comes back (same data directory, so the same socket and URL)
        assert start_embedded_server(data_dir, "restart") == url
        up_at = time.monotonic()
        up_wall = datetime.now(UTC)
        healthy_after = wait_for(lambda: check_health(service.engine).healthy, 30, "health to turn healthy")
        wait_for(lambda: load.ok_since(up_at) >= 150, 60, "the load to go on after the restart")
        load.join(RETRY_DEADLINE + 10)

        # read-your-writes through the same service and runtime
        fresh = service.execute_command(
            CommandFactory(actor="alice").create_research_workflow(
                title="After the restart",
                research_question="Did everything reconnect?",
                methodology="exploratory",
            )
        )
        detail = service.execute_query(
            QueryFactory().get_workflow(fresh.aggregate_id), min_position=fresh.position
        )
        assert detail.workflow["title"] == "After the restart"
        catch_up = wait_for(lambda: caught_up(observer), 60, "the projections to catch up")
        assert runtime.running, "the projection runner thread died"
        assert worker.poll() is None, procs.output(worker)
        # Both reconnected their runner-lock sessions by themselves; whichever took a projection
        # back, the in-process runtime must run all of them once the worker stops.
        wait_for(lambda: lock_sessions(observer) == 2, 30, "both runners to reconnect")
        worker.terminate()
        assert worker.wait(20) == 0, procs.output(worker)
        wait_for(
            lambda: runtime.manager.held() == set(PROJECTION_NAMES), 30, "the runtime to run every projection"
        )
        last = service.execute_command(
            CommandFactory(actor="alice").create_research_workflow(
                title="Applied by the runtime", research_question="Reconnected?", methodology="exploratory"
            )
        )
        wait_for(lambda: caught_up(observer), 30, "the runtime to apply a new command")
        assert last.position > fresh.position

        # ---- no command half-applied
        assert not load.unexpected, load.unexpected[:10]
        assert not load.gave_up
        assert load.failures, "no command was in flight or refused while the server was down"
        messages = {a.error.user_message for a in load.failures} | {refused_query.value.user_message}
        for message in messages:
            assert (
                "postgresql" not in message.lower()
                and str(data_dir) not in message
                and "SELECT" not in message
            )
        failed_ids = {a.command_id for a in load.failures}
        assert failed_ids <= set(load.results), "every failed command succeeded when retried"
        lost_ack = {i for i in failed_ids if load.results[i].duplicate}
        with observer.connect() as c:
            by_command = {
                row.command_id: sorted(row.positions)
                for row in c.execute(
                    text(
                        "SELECT command_id, array_agg(position) AS positions FROM events GROUP BY command_id"
                    )
                )
            }
            mismatched_log = c.execute(
                text(
                    """SELECT count(*) FROM command_log l WHERE jsonb_array_length(l.result -> 'events')
                   <> (SELECT count(*) FROM events e WHERE e.command_id = l.command_id)"""
                )
            ).scalar_one()
            orphans = c.execute(
                text(
                    """SELECT count(*) FROM events e WHERE NOT EXISTS
                   (SELECT 1 FROM command_log l WHERE l.command_id = e.command_id)"""
                )
            ).scalar_one()
            logged = c.execute(
                text("SELECT count(*) FROM command_log WHERE command_type <> ALL(CAST(:alerts AS text[]))"),
                {"alerts": [cls.__name__ for cls in ALERT_COMMANDS]},
            ).scalar_one()
        assert mismatched_log == 0 and orphans == 0
        for command_id, result in load.results.items():
            assert by_command.get(command_id) == sorted(e.position for e in result.events), command_id
        assert logged == len(load.results) + 2  # + the two commands sent after the load

        # ---- the outage's alert: decided while the server was down, written with that time after
        def unreachable_steps() -> list:
            with observer.connect() as c:
                return c.execute(
                    text(
                        """SELECT e.event_type, e.occurred_at, e.actor FROM events e
                           WHERE e.stream_id IN (SELECT stream_id FROM events WHERE event_type = 'AlertRaised'
                                                 AND payload->>'rule' = 'database_unreachable')
                           ORDER BY e.stream_id, e.version"""
                    )
                ).all()

        wait_for(lambda: len(unreachable_steps()) == 2, 60, "the outage's alert to be written and resolved")
        (raised, raised_at, raiser), (resolved, _, resolver) = unreachable_steps()
        assert (raised, resolved, raiser, resolver) == ("AlertRaised", "AlertResolved", "alerts", "alerts")
        [announced] = [(at, n) for at, n in told if n.rule == "database_unreachable" and n.state == "raised"]
        assert down_at < announced[0] < up_at, "announced while the server was down (or going down)"
        assert announced[1].occurred_at == raised_at, "written with the time it was decided"
        assert down_wall <= raised_at <= up_wall
        assert [n.state for _, n in told if n.rule == "database_unreachable"] == ["raised", "resolved"]

        state = assert_exactly_once(observer, caught_up=True)
        verified = assert_verified(observer)
        in_flight = sum(1 for a in load.failures if a.started < stopped_at)
        causes: dict[str, int] = {}
        for a in load.failures:
            cause = str(a.error.context.get("detail", "?"))
            causes[cause] = causes.get(cause, 0) + 1
        print(
            f"\ndatabase restart: server down {up_at - down_at:.1f} s "
            f"mid-load; {len(load.results)} commands ok, {len(load.failures)} failed attempts "
            f"({in_flight} started before the server had stopped, the rest while it was down; "
            f"{sorted({type(a.error).__name__ for a in load.failures})} from {causes}: {sorted(messages)[0]!r}), "
            f"{len(failed_ids)} commands retried with the same id: {len(failed_ids) - len(lost_ack)} had not been "
            f"applied, {len(lost_ack)} had (acknowledgement lost, retry = duplicate); half-applied 0; health "
            f"unhealthy while down, healthy {healthy_after:.1f} s after the restart; the in-process runtime and a "
            f"standby worker process both reconnected by themselves; caught up "
            f"{catch_up:.1f} s after the load; {next(iter(state.values()))[2]} events, events verified {verified}; "
            f"data lost: 0; alert 'database unreachable' decided {(raised_at - down_wall).total_seconds():.1f} s "
            f"into the outage, announced then, written after the restart with that time, resolved; "
            f"total {time.monotonic() - started:.1f} s"
        )
    finally:
        procs.__exit__(None, None, None)
        if load is not None:
            load.stop.set()
        if runtime is not None:
            runtime.stop(timeout=10)
        if service is not None:
            service.close()
        if observer is not None:
            observer.dispose()
        stop_embedded_server(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def lock_sessions(engine) -> int:
    """Runner-lock sessions in this database: one per live ProjectionManager that polls or holds them."""
    return scalar(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE :a",
        a=LOCKS_APP_LIKE,
    )
