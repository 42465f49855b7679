"""The write path: raw insert+commit (the physical limit of the machine) and commands through the
command bus, with the same number of clients, in alternating rounds."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url

from cqrs_core.infra.errors import CQRSError
from cqrs_core.tools.bench.harness import BenchContext, run_clients, timings
from cqrs_core.tools.bench.report import CommandThroughput, RawInserts
from cqrs_core.tools.bench.writers import backend_cpu
from cqrs_core.write.commands import CommandFactory


def measure_write_path(ctx: BenchContext, clients: int) -> tuple[RawInserts, CommandThroughput]:
    """The raw baseline and the commands with `clients` clients, measured in alternating
    rounds so that a slow spell of the disk or a busy neighbour weighs on both alike."""
    rounds = ctx.sizes.rounds
    raw_rows = raw_seconds = 0.0
    commands = errors = 0
    command_seconds = 0.0
    latencies: list[float] = []
    # The raw clients connect and disconnect within each round: their backends are gone before
    # they can be read, so the raw figure has no server CPU here (the writers phase has it).
    raw_cpu, command_cpu = _CPU(ctx, server=False), _CPU(ctx)
    _create_raw_table(ctx)
    try:
        for _ in range(rounds):
            with raw_cpu:
                rows, seconds = _raw_round(ctx, clients, ctx.sizes.raw_seconds / rounds)
            raw_rows, raw_seconds = raw_rows + rows, raw_seconds + seconds
            with command_cpu:
                count, failed, seconds, times = _command_round(
                    ctx, clients, ctx.sizes.command_seconds / rounds
                )
            commands, errors, command_seconds = (
                commands + count,
                errors + failed,
                command_seconds + seconds,
            )
            latencies += times
    finally:
        with ctx.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
    raw = RawInserts(
        clients, int(raw_rows), raw_seconds, raw_rows / raw_seconds, *raw_cpu.per_write(int(raw_rows))
    )
    p50, p95, p99 = timings(latencies)
    per_second = commands / command_seconds
    figure = CommandThroughput(
        clients,
        commands,
        errors,
        command_seconds,
        per_second,
        p50,
        p95,
        p99,
        per_second / raw.per_second if raw.per_second else 0.0,
        *command_cpu.per_write(commands),
    )
    ctx.say(
        f"{clients} client(s): raw insert+commit {raw.per_second:,.0f}/s, commands {per_second:,.0f}/s "
        f"(p99 {p99:.1f} ms)"
    )
    return raw, figure


class _CPU:
    """Adds up, over the rounds it wraps, the CPU of this process (the client threads; nothing
    else runs in it then) and of the scratch database's backends (`writers.backend_cpu`)."""

    def __init__(self, ctx: BenchContext, server: bool = True) -> None:
        self.ctx, self.client, self.server = ctx, 0.0, 0.0
        self.readable = server

    def __enter__(self) -> None:
        t = os.times()
        self._client = t.user + t.system
        self._server = backend_cpu(self.ctx) if self.readable else None

    def __exit__(self, *exc: object) -> None:
        t = os.times()
        self.client += t.user + t.system - self._client
        after = backend_cpu(self.ctx) if self.readable else None
        if self._server is None or after is None:
            self.readable = False
        else:
            # A backend connected during the round (the first command opens the pool's) counts whole.
            self.server += sum(cpu - self._server.get(pid, 0.0) for pid, cpu in after.items())

    def per_write(self, writes: int) -> tuple[float | None, float | None]:
        if not writes:
            return None, None
        return self.client / writes * 1000, self.server / writes * 1000 if self.readable else None


def _create_raw_table(ctx: BenchContext) -> None:
    # Same columns, defaults, indexes and constraints as `events`; no triggers.
    with ctx.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
        conn.exec_driver_sql("CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)")


def _raw_round(ctx: BenchContext, clients: int, seconds: float) -> tuple[int, float]:
    """One row per transaction, each client on its own bare psycopg2 connection in autocommit
    mode: one round trip and one WAL flush per row, the fewest a durable write can take."""
    u = make_url(ctx.url)
    dsn = {**u.translate_connect_args(username="user", database="dbname"), **dict(u.query)}
    payload = json.dumps(
        {
            "task_id": str(uuid.uuid4()),
            "result_summary": "Identified 412 candidate records; 37 met the inclusion criteria.",
            "attempt": 1,
        }
    )
    sql = (
        "INSERT INTO bench_raw_events (stream_id, version, event_type, payload, event_id, command_id, "
        "correlation_id, causation_id, actor) VALUES (%s, 1, 'TaskCompleted', %s, %s, %s, %s, %s, 'bench')"
    )
    counts = [0] * clients

    def client(i: int, ready: Callable[[], float]) -> None:
        conn = psycopg2.connect(**dsn)
        conn.autocommit = True
        try:
            cur = conn.cursor()
            deadline = ready()
            n = 0
            while time.perf_counter() < deadline:
                ids = [str(uuid.uuid4()) for _ in range(3)]
                cur.execute(sql, (f"raw-{uuid.uuid4()}", payload, ids[0], ids[1], ids[2], ids[1]))
                n += 1
            counts[i] = n
        finally:
            conn.close()

    elapsed = run_clients(clients, seconds, client)
    return sum(counts), elapsed


def _command_round(ctx: BenchContext, clients: int, seconds: float) -> tuple[int, int, float, list[float]]:
    """create-workflow then two add-task commands, repeated, by each client for `seconds`.
    Returns (commands, errors, seconds, latencies in ms)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    counts, errors = [0] * clients, [0] * clients

    def client(i: int, ready: Callable[[], float]) -> None:
        factory = CommandFactory(actor=f"bench-{i}", role="researcher")
        ctx.service.execute_command(next(_workflow_commands(factory)))  # opens a pooled connection
        deadline = ready()
        while True:
            for cmd in _workflow_commands(factory):
                if time.perf_counter() >= deadline:
                    return
                t0 = time.perf_counter()
                try:
                    ctx.service.execute_command(cmd)
                except CQRSError:
                    errors[i] += 1
                latencies[i].append((time.perf_counter() - t0) * 1000)
                counts[i] += 1

    elapsed = run_clients(clients, seconds, client)
    return sum(counts), sum(errors), elapsed, [ms for mine in latencies for ms in mine]


def _workflow_commands(factory: CommandFactory) -> Iterator[Any]:
    workflow_id = uuid.uuid4()
    yield factory.create_research_workflow(
        workflow_id=workflow_id,
        title="Bench: effect of peer instruction on course completion",
        research_question="Does peer instruction improve course completion among first-year students?",
        methodology="experimental",
        tags=["bench", "education"],
    )
    for name in ("Run participant survey", "Fit mixed-effects model"):
        yield factory.add_task(workflow_id=workflow_id, name=name, kind="analysis", assignee="stats-agent")
