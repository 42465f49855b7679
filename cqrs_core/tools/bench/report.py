"""The bench's report: one dataclass per figure, `BenchReport` with `to_dict`/`from_dict`
(the `bench --json` output and back), and `format_report`, the plain-text table with the targets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_gb: float
    postgresql: str
    python: str
    platform: str
    database: str  # where the bench ran: the temporary embedded server or a redacted URL
    load_average: float  # 1-minute load average at the start: other work on the machine skews every figure
    # How commands and queries reached the database: directly or through a pooler, and whether
    # they prepared their statements (CQRS_PREPARED_STATEMENTS).
    connections: str = "direct, prepared statements on"


@dataclass(frozen=True)
class RawInserts:
    clients: int
    rows: int
    seconds: float
    per_second: float
    client_cpu_ms: float | None = None  # CPU per row of the bench process (its client threads)
    server_cpu_ms: float | None = None  # CPU per row of the scratch database's backends


@dataclass(frozen=True)
class CommandThroughput:
    clients: int
    commands: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ratio_to_raw: float  # per_second / raw insert+commit per second with as many clients
    client_cpu_ms: float | None = None  # CPU per command of the bench process (its client threads)
    server_cpu_ms: float | None = None  # CPU per command of the scratch database's backends


@dataclass(frozen=True)
class WriterFigure:
    """One kind of write (`raw` insert+commit, our `commands`, the `peer` library) with
    `processes` concurrent writer processes; CPU in milliseconds per write, the writers' own
    (client) and the server backends' (None when the server's processes are not readable here)."""

    kind: str
    processes: int
    writes: int
    errors: int
    seconds: float
    per_second: float
    ratio_to_raw: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_ms: float
    server_cpu_ms: float | None
    load_average: float  # 1-minute load average at the end of this level


@dataclass(frozen=True)
class CatchUp:
    events: int  # the whole log, from zero to head
    workflows: int
    append_seconds: float
    append_events_per_second: float
    seconds: float
    events_per_second: float


@dataclass(frozen=True)
class QueryLatency:
    query: str
    detail: str
    samples: int
    cold_p50_ms: float
    cold_p95_ms: float
    warm_p50_ms: float
    warm_p95_ms: float


@dataclass(frozen=True)
class MixedQueries:
    threads: int
    queries: int
    seconds: float
    per_second: float
    cache_hit_rate: float


@dataclass(frozen=True)
class LagUnderLoad:
    target_rate: float
    achieved_rate: float
    seconds: float
    samples: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    command_p99_ms: float


@dataclass(frozen=True)
class BenchReport:
    mode: str  # quick | default | full
    machine: Machine
    raw_inserts: list[RawInserts]
    commands: list[CommandThroughput]
    catch_up: CatchUp
    rebuild_seconds: dict[str, float]
    queries: list[QueryLatency]
    mixed_queries: MixedQueries
    lag: LagUnderLoad
    view_refresh_seconds: dict[str, float]
    seconds: float
    notes: list[str] = field(default_factory=list)
    scaled_workflows: int = 0  # workflow_summary rows when `scaled_queries` ran
    read_model_workflows: int = 0  # workflow_summary rows when the views and queries were measured
    scaled_queries: list[QueryLatency] = field(default_factory=list)
    writers: list[WriterFigure] = field(default_factory=list)  # the writer-processes phase

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        """The report back from `to_dict()` (or `bench --json` output), e.g. to compare runs."""
        return cls(
            mode=d["mode"],
            machine=Machine(**d["machine"]),
            raw_inserts=[RawInserts(**r) for r in d["raw_inserts"]],
            commands=[CommandThroughput(**c) for c in d["commands"]],
            catch_up=CatchUp(**d["catch_up"]),
            rebuild_seconds=dict(d["rebuild_seconds"]),
            queries=[QueryLatency(**q) for q in d["queries"]],
            mixed_queries=MixedQueries(**d["mixed_queries"]),
            lag=LagUnderLoad(**d["lag"]),
            view_refresh_seconds=dict(d["view_refresh_seconds"]),
            seconds=d["seconds"],
            notes=list(d.get("notes", [])),
            scaled_workflows=d.get("scaled_workflows", 0),
            read_model_workflows=d.get("read_model_workflows", 0),
            scaled_queries=[QueryLatency(**q) for q in d.get("scaled_queries", [])],
            writers=[WriterFigure(**w) for w in d.get("writers", [])],
        )


TARGETS = {
    "commands_1": "≥ 75 % of raw, p99 ≤ 5 ms",
    "commands_8": "≥ 50 % of raw at 8 processes",
    "peer": "ours ≥ 2.5× the peer",
    "catch_up": "≥ 30,000 events/s",
    "rebuild": "1,000,000 events ≤ 30 s",
    "lag": "≤ 200 ms at 1,000 commands/s",
    "warm": "warm p50 ≤ 0.2 ms",
    "list_page": "cold p95 ≤ 10 ms at 100,000 workflows",
    "search": "p95 ≤ 30 ms",
    "mixed": "≥ 5,000 queries/s",
}


def _query_row(figure: str, q: QueryLatency, size: str, target: str) -> tuple[str, str, str, str]:
    return (
        figure,
        f"{q.cold_p50_ms:.2f} / {q.cold_p95_ms:.2f} ms",
        f"cold p50 / p95 ({q.samples} samples); warm p50 {q.warm_p50_ms:.3f} · p95 {q.warm_p95_ms:.3f} ms;"
        f" {q.detail}{size}",
        target,
    )


def _cpu(client_ms: float | None, server_ms: float | None) -> str:
    if client_ms is None:
        return ""
    return f"; CPU/write client {client_ms:.3f}" + (
        f" · server {server_ms:.3f} ms" if server_ms is not None else " ms"
    )


def _writer_rows(writers: list[WriterFigure]) -> list[tuple[str, str, str, str]]:
    """The writer-processes phase: per level, raw, commands and the peer, with the CPU split."""
    rows = []
    ours = {w.processes: w for w in writers if w.kind == "commands"}
    for w in writers:
        cpu = _cpu(w.client_cpu_ms, w.server_cpu_ms)[2:]
        if w.kind == "raw":
            detail, target = f"{w.writes:,} rows; {cpu}; load {w.load_average:g}", ""
        elif w.kind == "commands":
            detail = f"{w.ratio_to_raw:.0%} of raw; p50 {w.p50_ms:.2f} · p99 {w.p99_ms:.2f} ms; {cpu}"
            target = TARGETS["commands_8"] if w.processes == 8 else ""
        else:
            mine = ours.get(w.processes)
            times = mine.per_second / w.per_second if mine and w.per_second else 0.0
            detail = f"ours {times:.2f}× the peer; p50 {w.p50_ms:.2f} · p99 {w.p99_ms:.2f} ms; {cpu}"
            target = TARGETS["peer"] if w.processes == 1 else ""
        if w.errors:
            detail += f"; {w.errors} errors"
        name = {"raw": "raw insert+commit", "commands": "create commands", "peer": "peer (eventsourcing)"}
        rows.append(
            (f"{name.get(w.kind, w.kind)}, {w.processes} proc", f"{w.per_second:,.0f}/s", detail, target)
        )
    return rows


def format_report(report: BenchReport) -> str:
    """The report as a plain-text table (figure, value, detail, target)."""
    m = report.machine
    rows: list[tuple[str, str, str, str]] = []
    for r in report.raw_inserts:
        rows.append(
            (
                f"raw insert+commit, {r.clients} client{'s' if r.clients > 1 else ''}",
                f"{r.per_second:,.0f}/s",
                f"{r.rows:,} rows in {r.seconds:.1f} s (bare psycopg2, autocommit, copy of events)"
                + _cpu(r.client_cpu_ms, r.server_cpu_ms),
                "the physical limit",
            )
        )
    for c in report.commands:
        rows.append(
            (
                f"commands, {c.clients} client{'s' if c.clients > 1 else ''}",
                f"{c.per_second:,.0f}/s",
                f"p50 {c.p50_ms:.2f} · p95 {c.p95_ms:.2f} · p99 {c.p99_ms:.2f} ms; "
                f"{c.ratio_to_raw:.0%} of raw"
                + _cpu(c.client_cpu_ms, c.server_cpu_ms)
                + (f"; {c.errors} errors" if c.errors else ""),
                TARGETS["commands_1"] if c.clients == 1 else "",
            )
        )
    rows += _writer_rows(report.writers)
    cu = report.catch_up
    rows.append(
        (
            "projection catch-up",
            f"{cu.events_per_second:,.0f} events/s",
            f"{cu.events:,} events ({cu.workflows:,} workflows) in {cu.seconds:.1f} s, all projections; "
            f"appended at {cu.append_events_per_second:,.0f} events/s",
            TARGETS["catch_up"],
        )
    )
    for name, seconds in report.rebuild_seconds.items():
        rows.append(
            (
                f"rebuild {name}",
                f"{seconds:.2f} s",
                f"{cu.events:,} events ({cu.events / seconds:,.0f} events/s)" if seconds else "",
                TARGETS["rebuild"],
            )
        )
    scaled = {q.query for q in report.scaled_queries}
    listed = report.read_model_workflows or cu.workflows
    for q in report.queries:
        target = "" if q.query in scaled else TARGETS.get(q.query, "")  # the targets name the scaled size
        rows.append(
            _query_row(
                f"query {q.query}",
                q,
                f" ({listed:,} workflows)",
                "; ".join(t for t in (target, TARGETS["warm"]) if t),
            )
        )
    for q in report.scaled_queries:
        rows.append(
            _query_row(
                f"query {q.query}, {report.scaled_workflows:,} workflows", q, "", TARGETS.get(q.query, "")
            )
        )
    mq = report.mixed_queries
    rows.append(
        (
            "mixed queries, cache on",
            f"{mq.per_second:,.0f}/s",
            f"{mq.threads} threads, {mq.queries:,} queries, cache hit rate {mq.cache_hit_rate:.0%}",
            TARGETS["mixed"],
        )
    )
    lg = report.lag
    rows.append(
        (
            "lag p95 under load",
            f"{lg.p95_ms:,.0f} ms",
            f"{lg.achieved_rate:,.0f} of {lg.target_rate:,.0f} commands/s for {lg.seconds:.0f} s; "
            f"p50 {lg.p50_ms:,.0f} · max {lg.max_ms:,.0f} ms over {lg.samples} samples; "
            f"command p99 {lg.command_p99_ms:.1f} ms",
            TARGETS["lag"],
        )
    )
    for view, seconds in report.view_refresh_seconds.items():
        rows.append((f"refresh {view}", f"{seconds:.3f} s", f"at {listed:,} workflows", ""))

    widths = [max(len(r[i]) for r in rows + [("figure", "value", "detail", "target")]) for i in range(4)]
    lines = [
        f"cqrs-console bench ({report.mode}) — {report.seconds:.0f} s",
        f"machine: {m.cpus} CPUs, {m.memory_gb:g} GB RAM, PostgreSQL {m.postgresql}, Python {m.python}, {m.platform}; "
        f"load average {m.load_average:g} at the start",
        f"database: {m.database}; commands and queries: {m.connections}",
        "",
    ]
    header = ("figure", "value", "detail", "target")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2]), row[3]]
            ).rstrip()
        )
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
