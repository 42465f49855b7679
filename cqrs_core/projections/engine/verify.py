"""`verify`: replay the whole log into scratch tables and compare them row by row with the live
read models. The replay uses the projections' own code, so what it proves is that the live tables
hold exactly the effect of every event once (no lost batch, no double application, no hand edits).

Consistency while the live projections keep running: the bulk of the log is replayed first (into
session-local temporary tables, committing each batch so no long transaction holds back the
gap-free readers), then one REPEATABLE READ transaction reads the live checkpoint, replays the few
events up to it, and compares in the same snapshot — the live rows and their checkpoint belong
together because every batch writes both in one transaction.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from cqrs_core.eventlog.cursors import LogCursor, read_checkpoint
from cqrs_core.eventlog.partitions import partition_cursors, partition_of
from cqrs_core.eventlog.reader import LoggedEvent
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine.batches import RetryPolicy, Target, step
from cqrs_core.projections.engine.rebuild import skipped_by_live_events
from cqrs_core.projections.registry import PROJECTIONS, get_projection
from cqrs_core.read.tables import TableSpec

SCRATCH_SUFFIX = "__verify"
REPLAY_BATCH = 2000


@dataclass(frozen=True)
class Difference:
    table: str
    kind: str  # "changed" (same key, other values), "missing" (only in the replay), "extra" (only live)
    key: dict[str, Any]
    columns: tuple[str, ...]  # the differing columns of a changed row
    live: dict[str, Any] | None
    replay: dict[str, Any] | None

    def describe(self) -> str:
        key = ", ".join(f"{k}={v}" for k, v in self.key.items())
        if self.kind == "changed":
            assert self.live is not None and self.replay is not None  # a changed row has both
            parts = "; ".join(
                f"{c}: live {short_repr(self.live.get(c))} != replay {short_repr(self.replay.get(c))}"
                for c in self.columns
            )
            return f"{self.table} [{key}] changed: {parts}"
        if self.kind == "missing":
            return f"{self.table} [{key}] missing from the live table"
        return f"{self.table} [{key}] in the live table but not in the replay"


def short_repr(value: Any, limit: int = 80) -> str:
    """A value as its repr, cut to `limit` characters (for a line that names a difference)."""
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


@dataclass
class TableCheck:
    table: str
    projection: str
    position: int  # the live checkpoint the replay was compared at
    live_rows: int
    replay_rows: int
    changed: int
    missing: int
    extra: int
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.changed == self.missing == self.extra == 0


@dataclass
class VerifyReport:
    tables: list[TableCheck]
    problems: list[str]  # events the replay could not apply that the live projection did not skip
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tables)

    def lines(self) -> list[str]:
        out = []
        for t in self.tables:
            verdict = "ok" if t.ok else f"DRIFT: {t.changed} changed, {t.missing} missing, {t.extra} extra"
            out.append(
                f"{t.table}: {verdict} ({t.live_rows} live rows, {t.replay_rows} replayed, at position {t.position})"
            )
            out.extend(f"  {d.describe()}" for d in t.differences)
        out.extend(f"problem: {p}" for p in self.problems)
        return out


class ScratchTarget(Target):
    """Temporary tables of one session; the cursor lives in memory. Inside an open transaction
    each batch is a savepoint instead."""

    def __init__(
        self, conn: Connection, projection: Projection, problems: list[str], suffix: str = SCRATCH_SUFFIX
    ) -> None:
        self.conn = conn
        self.name = projection.name
        # Qualified: only this session's own temporary tables are written and compared, never a
        # table of the same name someone else made in a schema on the search path.
        self.tables = {t.name: f"pg_temp.{t.name}{suffix}" for t in projection.tables}
        self.problems = problems
        self.cursor = LogCursor()
        self.bound = LogCursor()
        # A split projection: each partition's live cursor; an event is replayed only up to its
        # own partition's (`bound` is then the furthest of them).
        self.partition_bounds: dict[int, LogCursor] = {}
        self.nested = False
        self._pending: LogCursor | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        self._pending = None
        with self.conn.begin_nested() if self.nested else self.conn.begin():
            yield self.conn
        if self._pending is not None:
            self.cursor = self._pending

    def start(self, conn: Connection) -> LogCursor | None:
        return self.cursor

    def upper_bound(self) -> LogCursor | None:
        return self.bound

    def skip_positions(self, conn: Connection, events: Sequence[LoggedEvent]) -> set[int]:
        skipped = skipped_by_live_events(conn, self.name, events)
        bounds = self.partition_bounds
        if bounds:
            k = len(bounds)
            skipped |= {e.position for e in events if e.cursor > bounds[partition_of(e.stream_id, k)]}
        return skipped

    def read_bound(self, conn: Connection) -> None:
        """Replay up to the live checkpoint, or for a split projection up to each partition's."""
        self.partition_bounds = partition_cursors(conn, self.name)
        if self.partition_bounds:
            self.bound = max(self.partition_bounds.values())
        else:
            self.bound = read_checkpoint(conn, self.name)

    def advance(
        self, conn: Connection, cursor: LogCursor, applied: Sequence[LoggedEvent], processed: int
    ) -> None:
        self._pending = cursor

    def park(self, conn: Connection, event: LoggedEvent, error: str, attempts: int) -> bool:
        self.problems.append(
            f"{self.name}: the replay cannot apply position {event.position} ({event.event_type}): {error}"
        )
        return True


def _replay_to_bound(projection: Projection, target: ScratchTarget) -> None:
    while step(projection, target, REPLAY_BATCH, RetryPolicy(attempts=0)).full:
        pass


def verify(engine: Engine, names: Sequence[str] | None = None, max_differences: int = 20) -> VerifyReport:
    """Compare every live read model (or those of `names`) with a fresh replay of the log."""
    started = time.monotonic()
    projections = [get_projection(n) for n in names] if names else list(PROJECTIONS.values())
    checks: list[TableCheck] = []
    problems: list[str] = []
    with engine.connect() as conn:
        for projection in projections:
            target = ScratchTarget(conn, projection, problems)
            with conn.begin():
                for spec in projection.tables:
                    scratch = target.tables[spec.name]
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {scratch}")
                    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {scratch} (LIKE {spec.name} INCLUDING ALL)")
                # Up to the low-water mark first (every partition is past it, so nothing the
                # snapshot below still needs is passed over); the snapshot replays the rest.
                target.bound = read_checkpoint(conn, projection.name)
            _replay_to_bound(projection, target)

            conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                with conn.begin():
                    target.read_bound(conn)
                    target.nested = True
                    _replay_to_bound(projection, target)
                    for spec in projection.tables:
                        checks.append(
                            _compare(
                                conn,
                                spec,
                                target.tables[spec.name],
                                projection.name,
                                target.bound,
                                max_differences,
                            )
                        )
            finally:
                conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                for scratch in target.tables.values():
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {scratch}")
    return VerifyReport(checks, problems, time.monotonic() - started)


def diff_sql(spec: TableSpec, live: str, replay: str, where: str = "") -> str:
    """The CTEs `l` (live rows the replay lacks) and `r` (replayed rows not live) of `spec`'s
    written columns, between the tables `live` and `replay`, both filtered by `where` (a
    WHERE clause with bound parameters, or nothing). Generated columns are not compared."""
    cols = ", ".join(spec.column_names)
    return f"""
        WITH l AS (SELECT {cols} FROM {live} {where} EXCEPT ALL SELECT {cols} FROM {replay} {where}),
             r AS (SELECT {cols} FROM {replay} {where} EXCEPT ALL SELECT {cols} FROM {live} {where})
    """


def paired_differences_sql(spec: TableSpec) -> str:
    """After `diff_sql`: each differing row as (live_row, replay_row) JSON, paired by key (one
    side NULL for a missing or an extra row); order and limit may follow."""
    on = " AND ".join(f"l.{k} = r.{k}" for k in spec.key)
    return f"SELECT to_jsonb(l) AS live_row, to_jsonb(r) AS replay_row FROM l FULL JOIN r ON {on}"


def difference_of(spec: TableSpec, live: dict[str, Any] | None, replay: dict[str, Any] | None) -> Difference:
    """One row of `paired_differences_sql` as a `Difference` (the columns that differ, for a changed row)."""
    either = live if live is not None else replay
    assert either is not None  # a full join pairs at least one side
    key = {k: either[k] for k in spec.key}
    if live is not None and replay is not None:
        columns = tuple(c for c in spec.column_names if live.get(c) != replay.get(c))
        return Difference(spec.name, "changed", key, columns, live, replay)
    if live is None:
        return Difference(spec.name, "missing", key, (), None, replay)
    return Difference(spec.name, "extra", key, (), live, None)


def _compare(
    conn: Connection, spec: TableSpec, scratch: str, projection: str, at: LogCursor, max_differences: int
) -> TableCheck:
    on = " AND ".join(f"l.{k} = r.{k}" for k in spec.key)
    order = ", ".join(f"COALESCE(l.{k}, r.{k})" for k in spec.key)
    diff = diff_sql(spec, spec.name, scratch)
    first_key = spec.key[0]
    counts = conn.execute(
        text(
            f"""{diff}
            SELECT count(*) FILTER (WHERE l.{first_key} IS NOT NULL AND r.{first_key} IS NOT NULL) AS changed,
                   count(*) FILTER (WHERE l.{first_key} IS NULL) AS missing,
                   count(*) FILTER (WHERE r.{first_key} IS NULL) AS extra,
                   (SELECT count(*) FROM {spec.name}) AS live_rows,
                   (SELECT count(*) FROM {scratch}) AS replay_rows
            FROM l FULL JOIN r ON {on}
            """
        )
    ).one()
    differences = [
        difference_of(spec, row.live_row, row.replay_row)
        for row in conn.execute(
            text(f"{diff} {paired_differences_sql(spec)} ORDER BY {order} LIMIT :n"), {"n": max_differences}
        )
    ]
    return TableCheck(
        spec.name,
        projection,
        at.position,
        int(counts.live_rows),
        int(counts.replay_rows),
        int(counts.changed),
        int(counts.missing),
        int(counts.extra),
        differences,
    )
