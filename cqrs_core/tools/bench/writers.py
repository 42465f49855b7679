"""The write path with concurrent writer *processes* (1, 2, 4, 8): raw one-row insert+commit
against create-workflow commands (one event each), and with `peer`, the same work through the
Python `eventsourcing` library, in alternating rounds. Separate processes, not threads: the GIL
would otherwise cap the clients at one core, and a deployment scales by running more processes.

Every figure carries the CPU it cost per write: the writer processes' own (user + system, from
`os.times` in each) and the server's (the PostgreSQL backends of the scratch database, read from
/proc/<pid>/stat when the server runs on this machine). On 2 cores their sum bounds the rate."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import CQRSError
from cqrs_core.tools.bench.harness import BENCH_APPLICATION, BenchContext, load_average, timings
from cqrs_core.tools.bench.report import WriterFigure

LEVELS = (1, 2, 4, 8)
KINDS = ("raw", "commands", "peer")
_RAW_SQL = (
    "INSERT INTO bench_raw_events (stream_id, version, event_type, payload, event_id, command_id, "
    "correlation_id, causation_id, actor) VALUES (%s, 1, 'WorkflowCreated', %s, %s, %s, %s, %s, 'bench')"
)
_TITLE = "Bench: effect of peer instruction on course completion"
_QUESTION = "Does peer instruction improve course completion among first-year students?"


def measure_writers(
    ctx: BenchContext, peer: bool = False, levels: Sequence[int] = LEVELS
) -> list[WriterFigure]:
    """Raw inserts, commands (and the peer) with each number of writer processes in `levels`."""
    kinds = KINDS if peer else KINDS[:2]
    seconds = ctx.sizes.raw_seconds / ctx.sizes.rounds
    _create_raw_table(ctx)
    if peer:
        from cqrs_core.tools.bench.peer import peer_application

        peer_application(ctx.url).close()  # CREATE_TABLE once, before the writers race to it
    workers = _Workers(max(levels), ctx.url, ctx.settings)
    figures: list[WriterFigure] = []
    try:
        for n in levels:
            totals = {kind: _Totals() for kind in kinds}
            for _ in range(ctx.sizes.rounds):
                for kind in kinds:
                    totals[kind].add(workers.round(ctx, kind, n, seconds))
            raw = totals["raw"].per_second
            for kind in kinds:
                t = totals[kind]
                p50, p95, p99 = timings(t.latencies)
                figures.append(
                    WriterFigure(
                        kind=kind,
                        processes=n,
                        writes=t.count,
                        errors=t.errors,
                        seconds=t.seconds,
                        per_second=t.per_second,
                        ratio_to_raw=t.per_second / raw if raw else 0.0,
                        p50_ms=p50,
                        p95_ms=p95,
                        p99_ms=p99,
                        client_cpu_ms=t.client_cpu / t.count * 1000 if t.count else 0.0,
                        server_cpu_ms=(
                            t.server_cpu / t.count * 1000 if t.count and t.server_cpu is not None else None
                        ),
                        load_average=load_average(),
                    )
                )
            ctx.say(
                f"{n} writer process(es): "
                + ", ".join(f"{kind} {totals[kind].per_second:,.0f}/s" for kind in kinds)
                + f" (load average {load_average():g})"
            )
    finally:
        workers.close()
        with ctx.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
    return figures


@dataclass
class _Totals:
    count: int = 0
    errors: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float | None = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, r: dict[str, Any]) -> None:
        self.count += r["count"]
        self.errors += r["errors"]
        self.seconds += r["seconds"]
        self.client_cpu += r["client_cpu"]
        self.server_cpu = (
            None
            if self.server_cpu is None or r["server_cpu"] is None
            else (self.server_cpu + r["server_cpu"])
        )
        self.latencies += r["latencies"]

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def _create_raw_table(ctx: BenchContext) -> None:
    # Same columns, defaults, indexes and constraints as `events`; no triggers.
    with ctx.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
        conn.exec_driver_sql("CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)")


class _Workers:
    """`size` writer processes, started once (spawned: nothing of the parent's pools or threads
    comes along) and given one round at a time."""

    def __init__(self, size: int, url: str, settings: Settings) -> None:
        from cqrs_core.infra.processes import spawning_without_main

        context = mp.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.processes = []
        with spawning_without_main():
            for i in range(size):
                mine, theirs = context.Pipe()
                p = context.Process(
                    target=_worker, name=f"bench-writer-{i}", args=(i, theirs, url, settings), daemon=True
                )
                p.start()
                self.pipes.append(mine)
                self.processes.append(p)

    def round(self, ctx: BenchContext, kind: str, n: int, seconds: float) -> dict[str, Any]:
        pipes = self.pipes[:n]
        for pipe in pipes:  # one at a time: the peer's CREATE_TABLE races itself in parallel
            pipe.send(("prepare", kind))
            _answer(pipe)
        before = backend_cpu(ctx)
        start = time.monotonic() + 0.05
        for pipe in pipes:
            pipe.send(("go", start, start + seconds))
        results = [_answer(pipe) for pipe in pipes]
        after = backend_cpu(ctx)
        server = (
            sum(after[pid] - before.get(pid, 0.0) for pid in after)
            if before is not None and after is not None
            else None
        )
        return {
            "count": sum(r["count"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "seconds": max(r["end"] for r in results) - start,
            "client_cpu": sum(r["cpu"] for r in results),
            "server_cpu": server,
            "latencies": [ms for r in results for ms in r["latencies"]],
        }

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for p in self.processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def _answer(pipe: Pipe) -> Any:
    if not pipe.poll(120):
        raise CQRSError("A bench writer process did not answer within 120 s; run the bench again.")
    try:
        status, value = pipe.recv()
    except (EOFError, OSError):
        raise CQRSError("A bench writer process ended before answering; run the bench again.") from None
    if status == "error":
        raise CQRSError(f"A bench writer process failed ({value}); run the bench again.")
    return value


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def backend_cpu(ctx: BenchContext) -> dict[int, float] | None:
    """CPU seconds (user + system) of every client backend of the scratch database, by pid: not
    autovacuum (which the earlier phases' bulk loads set off), nor the bench's own connections
    (`BENCH_APPLICATION`: this very query's among them); None when the server's processes cannot
    be read here (another machine, another container)."""
    with ctx.engine.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND application_name <> :own"
            ),
            {"own": BENCH_APPLICATION},
        ).scalars()
        out: dict[int, float] = {}
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                return None
            out[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
        return out


# ---------------------------------------------------------------- in the writer process


def _worker(index: int, pipe: Pipe, url: str, settings: Settings) -> None:
    writers: dict[str, Callable[[], None]] = {}
    try:
        while True:
            message = pipe.recv()
            if message[0] == "stop":
                break
            kind = message[1]
            try:
                if kind not in writers:
                    writers[kind] = _make_writer(kind, index, url, settings)
                writers[kind]()  # warm: connections open, statements prepared
                pipe.send(("ready", None))
                _, start, deadline = pipe.recv()
                pipe.send(("ok", _timed(writers[kind], start, deadline)))
            except Exception as exc:  # the parent reports it; this process ends
                pipe.send(("error", f"{type(exc).__name__}: {exc}"[:300]))
                break
    finally:
        pipe.close()


def _timed(write: Callable[[], None], start: float, deadline: float) -> dict[str, Any]:
    while time.monotonic() < start:
        time.sleep(0.001)
    t = os.times()
    cpu0 = t.user + t.system
    latencies: list[float] = []
    errors = 0
    while True:
        t0 = time.monotonic()
        if t0 >= deadline:
            break
        try:
            write()
        except Exception:
            errors += 1
        latencies.append((time.monotonic() - t0) * 1000)
    end = time.monotonic()
    t = os.times()
    return {
        "count": len(latencies),
        "errors": errors,
        "end": end,
        "cpu": t.user + t.system - cpu0,
        "latencies": latencies,
    }


def _make_writer(kind: str, index: int, url: str, settings: Settings) -> Callable[[], None]:
    if kind == "raw":
        return _raw_writer(url)
    if kind == "commands":
        return _command_writer(index, url, settings)
    from cqrs_core.tools.bench.peer import peer_writer  # a development dependency: only with --peer

    return peer_writer(url)


def _raw_writer(url: str) -> Callable[[], None]:
    """One row per transaction on a bare psycopg2 connection in autocommit mode: one round trip
    and one WAL flush per row, the fewest a durable write can take."""
    import psycopg2

    u = make_url(url)
    conn = psycopg2.connect(
        **{**u.translate_connect_args(username="user", database="dbname"), **dict(u.query)}
    )
    conn.autocommit = True
    cur = conn.cursor()
    payload = json.dumps(
        {
            "workflow_id": str(uuid.uuid4()),
            "title": _TITLE,
            "research_question": _QUESTION,
            "methodology": "experimental",
            "tags": ["bench", "education"],
        }
    )

    def write() -> None:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        cur.execute(_RAW_SQL, (f"raw-{uuid.uuid4()}", payload, ids[0], ids[1], ids[2], ids[1]))

    return write


def _command_writer(index: int, url: str, settings: Settings) -> Callable[[], None]:
    """create-workflow commands (one event each) through the service, as the console sends them."""
    from cqrs_core.tools.workload.runners import traffic_service
    from cqrs_core.write.commands import CommandFactory

    service = traffic_service(settings, url, pool_size=2)
    factory = CommandFactory(actor=f"bench-writer-{index}", role="researcher")

    def write() -> None:
        service.execute_command(
            factory.create_research_workflow(
                workflow_id=uuid.uuid4(),
                title=_TITLE,
                research_question=_QUESTION,
                methodology="experimental",
                tags=["bench", "education"],
            )
        )

    return write
