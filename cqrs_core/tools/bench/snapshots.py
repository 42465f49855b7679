"""`bench-snapshots`: the first command on a workflow with a long history, loaded by a full replay
(snapshots off) and from a snapshot plus the events after it (issue 16 part 5).

The stream is written straight into the log (as an import would: one created workflow, started,
then paused and resumed in turn), so building 100,000 events takes seconds, not a command each.
"First command" means the bus holds no copy of the workflow: every timed command follows
`forget_aggregates`, as the first one after a process starts would."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import TextIO

from sqlalchemy import text

from cqrs_core.domain.events import stream_id_for
from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import make_engine, migrate
from cqrs_core.tools.bench.harness import progress_printer, scratch_database
from cqrs_core.tools.workload.runners import traffic_service
from cqrs_core.write.commands import CommandFactory

DEFAULT_EVENTS = 100_000
RUNS = 5
BENCH_SNAPSHOT_EVERY = 500  # the default interval, whatever the environment sets


@dataclass(frozen=True)
class SnapshotLoad:
    events: int  # the stream's length before the timed commands
    runs: int
    replay_ms: float  # median first command, snapshots off (a full replay)
    first_with_snapshots_ms: float  # the command that found no snapshot: full replay + writing one
    snapshot_ms: float  # median first command loading from the snapshot plus its tail
    speedup: float


_FILL_SQL = text(
    """INSERT INTO events (stream_id, version, event_type, schema_version, payload, event_id, correlation_id, actor)
       SELECT :stream_id, v,
              CASE WHEN v = 1 THEN 'WorkflowCreated' WHEN v = 2 THEN 'WorkflowStarted'
                   WHEN v % 2 = 1 THEN 'WorkflowPaused' ELSE 'WorkflowResumed' END,
              1,
              CASE WHEN v = 1 THEN CAST(:created AS jsonb)
                   WHEN v % 2 = 1 AND v > 2 THEN '{"reason": "a break"}'::jsonb ELSE '{}'::jsonb END,
              gen_random_uuid(), gen_random_uuid(), 'bench-snapshots'
       FROM generate_series(1, :events) AS v"""
)


def fill_stream(db_url: str, events: int) -> str:
    """A workflow of `events` events (at least 2), written as the database owner; its id."""
    workflow_id = str(uuid.uuid4())
    created = {
        "workflow_id": workflow_id,
        "title": "Bench: a workflow with a long history",
        "research_question": "How long does its first command take?",
        "methodology": "experimental",
        "tags": ["bench"],
        "priority": "normal",
        "owner": "bench-snapshots",
        "due_date": None,
    }
    engine = make_engine(db_url, application_name="cqrs-bench-snapshots")
    try:
        with engine.begin() as conn:
            conn.execute(
                _FILL_SQL,
                {
                    "stream_id": stream_id_for(workflow_id),
                    "created": json.dumps(created),
                    "events": max(2, events),
                },
            )
            conn.exec_driver_sql("ANALYZE events")
    finally:
        engine.dispose()
    return workflow_id


def measure_snapshot_load(
    db_url: str, settings: Settings, events: int, runs: int = RUNS, say=lambda line: None
) -> SnapshotLoad:
    """Time the first command on a fresh `events`-event workflow: `runs` times with snapshots
    off, then once with snapshots on and none taken yet (it takes one), then `runs` times from it."""
    events = max(2, events)
    workflow_id = fill_stream(db_url, events)
    say(f"wrote a workflow of {events:,} events")
    factory = CommandFactory(actor="bench-snapshots", role="researcher")
    paused = events % 2 == 1  # the last filled event: odd versions past 2 pause

    def first_command(service) -> float:
        nonlocal paused
        service.command_bus.forget_aggregates()
        cmd = (
            factory.resume_workflow(workflow_id=workflow_id)
            if paused
            else factory.pause_workflow(workflow_id=workflow_id, reason="a break")
        )
        started = time.perf_counter()
        service.execute_command(cmd)
        paused = not paused
        return (time.perf_counter() - started) * 1000

    def timed(every: int) -> list[float]:
        service = traffic_service(settings.model_copy(update={"snapshot_every": every}), db_url, pool_size=2)
        try:
            first_command(service)  # a warm-up: the connection, the prepared statements, the page cache
            return [first_command(service) for _ in range(runs)]
        finally:
            service.close()

    replay_ms = statistics.median(timed(0))
    say(f"first command by full replay: {replay_ms:,.1f} ms (median of {runs})")
    service = traffic_service(
        settings.model_copy(update={"snapshot_every": BENCH_SNAPSHOT_EVERY}), db_url, pool_size=2
    )
    try:
        taking = first_command(service)
    finally:
        service.close()
    snapshot_ms = statistics.median(timed(BENCH_SNAPSHOT_EVERY))
    say(
        f"first command from a snapshot: {snapshot_ms:,.1f} ms (median of {runs}; {taking:,.1f} ms taking it)"
    )
    return SnapshotLoad(events, runs, replay_ms, taking, snapshot_ms, replay_ms / snapshot_ms)


def run_snapshot_bench(
    events: int = DEFAULT_EVENTS,
    url: str | None = None,
    runs: int = RUNS,
    *,
    log: TextIO | None = None,
    settings: Settings | None = None,
) -> SnapshotLoad:
    """`measure_snapshot_load` on a fresh scratch database (as `bench`: embedded, or on `url`'s server)."""
    settings = (settings or get_settings()).model_copy(
        update={"database_url": None, "read_database_url": None, "direct_database_url": None}
    )
    say = progress_printer(log)
    with scratch_database(url, say) as (db_url, _where):
        migrate(db_url)
        return measure_snapshot_load(db_url, settings, events, runs, say)


def format_snapshot_load(r: SnapshotLoad) -> str:
    return "\n".join(
        [
            f"first command on a {r.events:,}-event workflow (median of {r.runs}):",
            f"  full replay (snapshots off)   {r.replay_ms:10,.1f} ms",
            f"  snapshot + events after it   {r.snapshot_ms:10,.1f} ms   ({r.speedup:,.1f}x faster)",
            f"  the command that took it     {r.first_with_snapshots_ms:10,.1f} ms   (full replay + writing it)",
        ]
    )
