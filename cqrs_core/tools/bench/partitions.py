"""`bench-partitions`: catch-up of the whole log by worker count, with projections split into
partitions (issue 19, part 3).

On a fresh scratch database it appends about `events` events of generated workflows once, then
for each run: empties the read models and puts every checkpoint back at the origin, starts W
`cqrs-console worker` processes with the projections paused (so interpreter start-up and the
sharing out of the partitions are not timed), waits until the W workers hold every partition,
resumes the projections and times the catch-up until every projection's low-water mark reaches
the log's end. Each run also reports the CPU seconds of the workers and of the PostgreSQL server,
and the 1-minute load average before and after (the machine may be shared). A run whose counts do
not add up (an event applied twice or missed) is noted in the report."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from sqlalchemy import Engine, text

from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import migrate
from cqrs_core.tools.bench.harness import (
    DEFAULT,
    BenchContext,
    Sizes,
    load_average,
    progress_printer,
    scratch_database,
)

# Each run waits at most this long for the workers to start and share the partitions out ...
START_TIMEOUT_SECONDS = 120.0
# ... and for the catch-up itself.
CATCH_UP_TIMEOUT_SECONDS = 3600.0
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class PartitionRun:
    workers: int
    partitions: int
    seconds: float
    events_per_second: float
    speedup: float  # events/s over the one-worker run with the same partitions (1.0 for that run)
    worker_cpu_seconds: float
    postgres_cpu_seconds: float
    load_before: float
    load_after: float


@dataclass
class PartitionBenchReport:
    events: int
    workflows: int
    cpus: int
    runs: list[PartitionRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_partition_bench(
    events: int,
    workers: Sequence[int] = (1, 2, 4),
    partitions: int = 4,
    url: str | None = None,
    *,
    log: TextIO | None = None,
    settings: Settings | None = None,
) -> PartitionBenchReport:
    """Measure the catch-up of `events` events by 1, 2 and 4 (`workers`) worker processes over
    projections split into `partitions`, plus one worker over unsplit projections (today's
    default) as the reference."""
    say = progress_printer(log)
    settings = (settings or get_settings()).model_copy(
        update={"database_url": None, "read_database_url": None, "direct_database_url": None}
    )
    with scratch_database(url, say) as (db_url, _where):
        migrate(db_url)
        ctx = BenchContext(db_url, settings, Sizes(**{**asdict(DEFAULT), "events": events}), say)
        try:
            from cqrs_core.tools.bench.projections import append_events

            appended, workflows, seconds = append_events(ctx)
            say(f"appended {appended:,} events ({workflows:,} workflows) in {seconds:.1f} s")
            report = PartitionBenchReport(appended, workflows, os.cpu_count() or 0)
            plan = [(1, 1), *((w, partitions) for w in workers)]
            base: dict[int, float] = {}
            for count, k in plan:
                run = _one_run(ctx.engine, db_url, count, k, say, report.notes)
                rate = run.events_per_second
                base.setdefault(k, rate)
                run = PartitionRun(**{**asdict(run), "speedup": round(rate / base[k], 2)})
                report.runs.append(run)
                say(
                    f"{count} worker(s), {k} partition(s): {run.seconds:.1f} s, {rate:,.0f} events/s "
                    f"({run.speedup:.2f}x), workers {run.worker_cpu_seconds:.1f} CPU s, PostgreSQL "
                    f"{run.postgres_cpu_seconds:.1f} CPU s, load {run.load_before:.2f} -> {run.load_after:.2f}"
                )
            return report
        finally:
            ctx.close()


def _one_run(
    engine: Engine, db_url: str, workers: int, partitions: int, say: Callable[[str], None], notes: list[str]
) -> PartitionRun:
    from cqrs_core.projections import PROJECTIONS

    names = list(PROJECTIONS)
    _rewind(engine, names)
    _set_paused(engine, names, True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env.update(
        {
            "CQRS_DATABASE_URL": db_url,
            "CQRS_PROJECTION_PARTITIONS": str(partitions),
            # Only the projections are measured: no continuous verification, rare samples.
            "CQRS_VERIFY_EVERY_SECONDS": "0",
            "CQRS_LAG_SAMPLE_SECONDS": "5",
            "CQRS_VIEW_REFRESH_SECONDS": "3600",
            "CQRS_ALERT_EVALUATE_SECONDS": "3600",
            "CQRS_LOG_LEVEL": "WARNING",
        }
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cqrs_core", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        units = len(names) * partitions
        _wait(
            lambda: _lock_holders(engine) == min(workers, partitions) and _held_units(engine) == units,
            START_TIMEOUT_SECONDS,
            f"{workers} worker(s) to share the {units} partitions",
        )
        head = _head(engine)
        pg_before, load_before = _postgres_cpu(engine), load_average()
        workers_before = sum(_cpu_of(p.pid) for p in procs)
        began = time.perf_counter()
        _set_paused(engine, names, False)
        _wait(lambda: _caught_up(engine, head), CATCH_UP_TIMEOUT_SECONDS, "the catch-up")
        seconds = time.perf_counter() - began
        worker_cpu = sum(_cpu_of(p.pid) for p in procs) - workers_before
        pg_cpu = _postgres_cpu(engine) - pg_before
        _check_counts(engine, head, workers, partitions, notes)
        return PartitionRun(
            workers=workers,
            partitions=partitions,
            seconds=round(seconds, 2),
            events_per_second=round(head / seconds, 1),
            speedup=1.0,
            worker_cpu_seconds=round(worker_cpu, 1),
            postgres_cpu_seconds=round(pg_cpu, 1),
            load_before=load_before,
            load_after=load_average(),
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def _rewind(engine: Engine, names: Sequence[str]) -> None:
    """Empty the read models and put every checkpoint (and partition) back at the origin."""
    from cqrs_core.projections import PROJECTIONS

    tables = [t.name for n in names for t in PROJECTIONS[n].tables]
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(tables)}"))
        conn.execute(
            text("UPDATE projection_checkpoints SET last_txid = '0', last_position = 0, events_applied = 0")
        )
        conn.execute(text("DELETE FROM parked_events"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f"VACUUM ANALYZE {table}"))


def _set_paused(engine: Engine, names: Sequence[str], paused: bool) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE projection_control SET desired_state = :s WHERE name = ANY(CAST(:n AS text[]))"),
            {"s": "paused" if paused else "running", "n": list(names)},
        )


_HELD_SQL = """
    SELECT {what} FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND classid = :ns AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _lock_holders(engine: Engine) -> int:
    from cqrs_core.projections.engine.locks import RUNNER_NAMESPACE

    with engine.connect() as conn:
        return int(
            conn.execute(
                text(_HELD_SQL.format(what="count(DISTINCT pid)")), {"ns": RUNNER_NAMESPACE}
            ).scalar_one()
        )


def _held_units(engine: Engine) -> int:
    from cqrs_core.projections.engine.locks import RUNNER_NAMESPACE

    with engine.connect() as conn:
        return int(
            conn.execute(text(_HELD_SQL.format(what="count(*)")), {"ns": RUNNER_NAMESPACE}).scalar_one()
        )


def _head(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COALESCE(max(position), 0) FROM events")).scalar_one())


def _caught_up(engine: Engine, head: int) -> bool:
    with engine.connect() as conn:
        behind = conn.execute(
            text(
                "SELECT count(*) FROM projection_checkpoints c, "
                "(SELECT txid, position FROM events ORDER BY txid DESC, position DESC LIMIT 1) e "
                "WHERE (c.last_txid, c.last_position) < (e.txid, e.position)"
            )
        ).scalar_one()
    return behind == 0


def _check_counts(engine: Engine, head: int, workers: int, partitions: int, notes: list[str]) -> None:
    """Each projection counted as many events applied as its checkpoint has passed (read in one
    snapshot: events may still be appended meanwhile)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.name, c.events_applied, (SELECT count(*) FROM events e"
                " WHERE (e.txid, e.position) <= (c.last_txid, c.last_position)) AS passed"
                " FROM projection_checkpoints c ORDER BY c.name"
            )
        ).all()
    for name, applied, passed in rows:
        if applied != passed or passed < head:
            notes.append(
                f"{workers} worker(s), {partitions} partition(s): {name} counted {applied:,} events applied, "
                f"{passed:,} at or before its checkpoint (the log had {head:,} when the run started)"
            )


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench-partitions: gave up waiting for {what} after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def _cpu_of(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _postgres_cpu(engine: Engine) -> float:
    """CPU seconds used so far by the server's processes (the postmaster and its children), when
    the server runs on this machine and we may read them; 0.0 otherwise."""
    import psutil

    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        postmaster = psutil.Process(pid).parent()
        if postmaster is None:
            return 0.0
        # The live processes, and what the ones that exited used (reaped by the postmaster).
        own = postmaster.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for p in postmaster.children():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


def format_partition_report(report: PartitionBenchReport) -> str:
    lines = [
        f"Catch-up of {report.events:,} events ({report.workflows:,} workflows) by worker processes, "
        f"{report.cpus} CPUs",
        "",
        "| workers | partitions | seconds | events/s | vs 1 worker | worker CPU s | PostgreSQL CPU s | load before -> after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report.runs:
        lines.append(
            f"| {r.workers} | {r.partitions} | {r.seconds:.1f} | {r.events_per_second:,.0f} | "
            f"{r.speedup:.2f}x | {r.worker_cpu_seconds:.1f} | {r.postgres_cpu_seconds:.1f} | "
            f"{r.load_before:.2f} -> {r.load_after:.2f} |"
        )
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
