"""Rebuilding a projection without downtime.

The log is replayed into shadow tables (`cqrs_shadow.<table>`) in committed batches, each moving the
rebuild's own cursor in `projection_control`, while the live tables keep serving and the live
runner keeps applying new events. A killed rebuild leaves the live tables untouched; the next
rebuild finds the shadow and its cursor and carries on from there.

The swap. The statistics materialized views read `workflow_summary` and `task_summary`, and
views bind to tables, not names: renaming the shadow into place would leave the views on the old
table, and dropping the old one would need CASCADE, taking the views (and the query side's
statements) with it. So the swap replaces *contents* instead, in one transaction: lock the live
checkpoint (the live runner waits), apply the last few events to the shadow, delete the live rows
that differ from the shadow and insert the shadow rows the live table lacks (an EXCEPT diff, so a
rebuild that confirms the current state writes nothing), and move the checkpoint to the shadow's
cursor. Readers see the old rows until the commit and the new ones after it — never an empty or
half-filled table — and no DDL touches the live tables.

Trusting a shadow. Whatever a rebuild finds in `cqrs_shadow` it did not create in the same
transaction may have been planted: a trigger, rule or policy on it would run its author's code
with the rights of the session that rebuilds. Before resuming into a shadow, and again inside the
swap, each one must be owned by the role this session acts as and be a plain table exactly like
a fresh shadow (see `_untrusted`); otherwise it is dropped and the rebuild starts afresh, or, when
this role cannot drop it, the rebuild is refused. Between those two checks nobody without this
role's rights can change a shadow (that needs its owner) or create one (migration 0005: only
cqrs_app may create in the schema).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import psycopg2.errors
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from cqrs_core.eventlog.cursors import (
    ASYNC_COMMIT,
    LogCursor,
    lock_checkpoint,
    locked_cursor,
    replace_checkpoint,
)
from cqrs_core.eventlog.partitions import (
    lock_partition_rows,
    parked_in_front,
    partition_cursors,
    partition_of,
    reset_partitions,
)
from cqrs_core.eventlog.reader import LoggedEvent, read_events
from cqrs_core.infra.db import RUNTIME_ROLE
from cqrs_core.infra.errors import ConcurrencyError, CQRSError
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine.batches import RetryPolicy, Target, step
from cqrs_core.projections.engine.failures import describe_error
from cqrs_core.projections.engine.gc_tuning import catch_up_gc
from cqrs_core.projections.engine.locks import REBUILD_NAMESPACE, exclusive
from cqrs_core.projections.engine.parking import park_event
from cqrs_core.read.tables import TableSpec

log = logging.getLogger(__name__)

# Migration 0005: the one schema the runtime role may create tables in (never `public`, where a
# planted object could be picked up by code running as the owner).
SHADOW_SCHEMA = "cqrs_shadow"
# Events the swap applies inside its lock at most per round; the shadow is caught up before.
SWAP_TAIL_LIMIT = 5000
SWAP_ATTEMPTS = 5


class RebuildFailed(CQRSError):
    """The replay met an event it cannot apply under the fault policy; the live tables are as they were."""

    category = "projection"
    status = 409


@dataclass
class RebuildResult:
    name: str
    finished: bool  # False: stopped on request; the next rebuild carries on
    resumed: bool
    events: int  # events replayed by this run
    rows_changed: dict[str, int] = field(default_factory=dict)  # per live table: rows deleted + inserted
    seconds: float = 0.0


def shadow_name(table: str) -> str:
    """The schema-qualified name of `table`'s shadow."""
    return f"{SHADOW_SCHEMA}.{table}"


class ShadowTarget(Target):
    """The shadow tables, with the rebuild cursor in `projection_control`."""

    def __init__(self, engine: Engine, projection: Projection) -> None:
        self.engine = engine
        self.name = projection.name
        self.tables = {t.name: shadow_name(t.name) for t in projection.tables}

    def transaction(self) -> AbstractContextManager[Connection]:
        return self.engine.begin()

    def start(self, conn: Connection) -> LogCursor | None:
        row = conn.execute(
            text(
                f"SELECT rebuild_txid::text AS txid, rebuild_position, {ASYNC_COMMIT} AS async_commit"
                " FROM projection_control WHERE name = :n FOR UPDATE"
            ),
            {"n": self.name},
        ).one()
        return None if row.txid is None else LogCursor(int(row.txid), row.rebuild_position)

    def skip_positions(self, conn: Connection, events: Sequence[LoggedEvent]) -> set[int]:
        return skipped_by_live_events(conn, self.name, events)

    def advance(
        self, conn: Connection, cursor: LogCursor, applied: Sequence[LoggedEvent], processed: int
    ) -> None:
        conn.execute(
            text(
                """
                UPDATE projection_control
                   SET rebuild_txid = CAST(:txid AS xid8), rebuild_position = :position,
                       rebuild_done = rebuild_done + :processed, rebuild_applied = rebuild_applied + :applied,
                       rebuild_total = GREATEST(rebuild_total, rebuild_done + :processed),
                       rebuild_heartbeat_at = clock_timestamp()
                 WHERE name = :n
                """
            ),
            {
                "n": self.name,
                "txid": str(cursor.txid),
                "position": cursor.position,
                "processed": processed,
                "applied": len(applied),
            },
        )

    def park(self, conn: Connection, event: LoggedEvent, error: str, attempts: int) -> bool:
        policy = conn.execute(
            text("SELECT failure_policy FROM projection_control WHERE name = :n"), {"n": self.name}
        ).scalar_one()
        if policy == "skip":
            park_event(conn, self.name, event, error, attempts)
            return True
        conn.execute(
            text("UPDATE projection_control SET rebuild_error = :e WHERE name = :n"),
            {"n": self.name, "e": f"position {event.position} ({event.event_type}): {error}"},
        )
        return False


def skipped_by_live_events(conn: Connection, name: str, events: Sequence[LoggedEvent]) -> set[int]:
    """`skipped_by_live` for a batch of events, also for a projection split into partitions: an
    event counts as skipped when its own partition's cursor is past it."""
    cursors_by_partition = partition_cursors(conn, name)
    if not cursors_by_partition:
        return skipped_by_live(conn, name, [e.position for e in events])
    if not events:
        return set()
    positions = [e.position for e in events]
    parked = set(
        conn.execute(
            text(
                """
                SELECT position FROM parked_events
                WHERE projection = :n AND status IN ('parked', 'discarded') AND position BETWEEN :lo AND :hi
                """
            ),
            {"n": name, "lo": min(positions), "hi": max(positions)},
        ).scalars()
    )
    k = len(cursors_by_partition)
    return {
        e.position
        for e in events
        if e.position in parked and e.cursor <= cursors_by_partition[partition_of(e.stream_id, k)]
    }


def skipped_by_live(conn: Connection, name: str, positions: Sequence[int]) -> set[int]:
    """Of `positions`, the events the live projection went past without applying (parked under
    the skip policy, or discarded). A replay skips them too, so it reproduces the live state."""
    if not positions:
        return set()
    # A position range rather than an array of thousands of positions (whose parsing and
    # planning cost more than the query); the exact set is taken here.
    rows = conn.execute(
        text(
            """
            SELECT p.position FROM parked_events p JOIN projection_checkpoints c ON c.name = p.projection
            WHERE p.projection = :n AND p.status IN ('parked', 'discarded')
              AND p.position BETWEEN :lo AND :hi
              AND (p.txid, p.position) <= (c.last_txid, c.last_position)
            """
        ),
        {"n": name, "lo": min(positions), "hi": max(positions)},
    )
    wanted = set(positions)
    return {r.position for r in rows if r.position in wanted}


def rebuild(
    engine: Engine,
    projection: Projection,
    *,
    retry: RetryPolicy,
    batch_size: int,
    owner: str,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> RebuildResult:
    """Replay the whole log into shadow tables and swap them in (see the module docstring). A
    projection split into partitions keeps its layout; every partition starts at the swap's
    cursor (so the runners may then split it as their settings ask, see partitions.set_layout)."""
    name = projection.name
    with exclusive(engine, REBUILD_NAMESPACE, name) as mine:
        if not mine:
            raise ConcurrencyError(f"A rebuild of {name} is already running; wait for it to finish.")
        started = time.monotonic()
        try:
            done, total, resumed = _prepare(engine, projection, owner)
        except Exception as exc:
            _record_failure(engine, name, exc)  # and a requested rebuild is not tried again and again
            raise
        log.info(
            "rebuilding %s (%s at %d of %d events)", name, "resuming" if resumed else "starting", done, total
        )
        target = ShadowTarget(engine, projection)
        replayed = 0
        catch_up_gc.enter()  # a rebuild is one long catch-up
        try:
            if progress:
                progress(done, total)
            for _ in range(SWAP_ATTEMPTS):
                while True:
                    if stop is not None and stop.is_set():
                        log.info(
                            "rebuild of %s stopped at %d of %d events; it can be restarted", name, done, total
                        )
                        _mark_stopped(engine, name)
                        return RebuildResult(
                            name, False, resumed, replayed, seconds=time.monotonic() - started
                        )
                    result = step(projection, target, batch_size, retry)
                    replayed += result.processed
                    done += result.processed
                    total = max(total, done)
                    if result.halted:
                        raise RebuildFailed(
                            f"The rebuild of {name} stopped at an event it cannot apply; "
                            "see parked events and the projection's last error, fix it, then rebuild again."
                        )
                    if progress:
                        progress(done, total)
                    if not result.full:
                        break
                changed = _swap(engine, projection, target)
                if changed is not None:
                    seconds = time.monotonic() - started
                    log.info(
                        "rebuilt %s: %d events in %.1f s, rows changed %s", name, replayed, seconds, changed
                    )
                    return RebuildResult(name, True, resumed, replayed, changed, seconds)
            raise RebuildFailed(f"The rebuild of {name} could not swap in its tables; try again.")
        except Exception as exc:
            _record_failure(engine, name, exc)
            raise
        finally:
            catch_up_gc.leave()


def _prepare(engine: Engine, projection: Projection, owner: str) -> tuple[int, int, bool]:
    """Resume an unfinished rebuild whose shadow tables exist and can be trusted, or start a fresh shadow."""
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT rebuild_txid::text AS txid, rebuild_done FROM projection_control WHERE name = :n FOR UPDATE"
            ),
            {"n": projection.name},
        ).one()
        _require_shadow_rights(conn, projection.name)
        total = int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())
        shadows = [shadow_name(t.name) for t in projection.tables]
        have_shadows = all(conn.execute(text("SELECT to_regclass(:t)"), {"t": s}).scalar() for s in shadows)
        params = {"n": projection.name, "owner": owner, "total": total}
        untrusted: dict[str, str] = {}
        if row.txid is not None and have_shadows:
            untrusted = {spec.name: why for spec in projection.tables if (why := _untrusted(conn, spec))}
            for table, why in untrusted.items():
                log.warning(
                    "rebuild of %s: not resuming into %s (%s); starting afresh",
                    projection.name,
                    shadow_name(table),
                    why,
                )
        if row.txid is not None and have_shadows and not untrusted:
            conn.execute(
                text(
                    """
                    UPDATE projection_control
                       SET rebuild_owner = :owner, rebuild_started_at = clock_timestamp(),
                           rebuild_heartbeat_at = clock_timestamp(), rebuild_done_at_start = rebuild_done,
                           rebuild_total = GREATEST(:total, rebuild_done), rebuild_error = NULL
                     WHERE name = :n
                    """
                ),
                params,
            )
            done = int(row.rebuild_done or 0)
            return done, max(total, done), True
        for spec in projection.tables:
            create_shadow(conn, projection, spec)
        conn.execute(
            text(
                """
                UPDATE projection_control
                   SET rebuild_owner = :owner, rebuild_started_at = clock_timestamp(),
                       rebuild_heartbeat_at = clock_timestamp(), rebuild_txid = '0', rebuild_position = 0,
                       rebuild_done = 0, rebuild_done_at_start = 0, rebuild_applied = 0, rebuild_total = :total,
                       rebuild_error = NULL, rebuild_finished_at = NULL
                 WHERE name = :n
                """
            ),
            params,
        )
        return 0, total, False


def _require_shadow_rights(conn: Connection, name: str) -> None:
    """A rebuild creates its shadows in cqrs_shadow, which only the runtime role may (migration 0005):
    a process logged in with the projector's rights alone runs projections but cannot rebuild."""
    if not conn.execute(
        text("SELECT pg_catalog.has_schema_privilege(:schema, 'CREATE')"), {"schema": SHADOW_SCHEMA}
    ).scalar_one():
        raise RebuildFailed(
            f"Rebuilding {name} needs the {RUNTIME_ROLE} role (it creates tables in {SHADOW_SCHEMA}); "
            f"run the rebuild as a database login that is a member of {RUNTIME_ROLE}."
        )


# Why a shadow table cannot be trusted (NULL: it can). A fresh shadow is owned by the role that
# created it, a plain table with the live table's columns (names, types, defaults; LIKE drops
# the generation expressions), and nothing that runs code when it is written or read: no
# trigger, rule or row-level policy, no inheritance, no constraint but the primary key (and NOT
# NULL), and no index, default or constraint that calls a function or operator outside
# pg_catalog (a planted index expression or predicate would run on every insert).
_UNTRUSTED_SQL = """
WITH s AS (SELECT c.* FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(:shadow)),
     cols AS (
        SELECT a.attrelid, pg_catalog.array_agg(
                   pg_catalog.format('%I %s %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                                     CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END)
                   ORDER BY a.attnum) AS columns
        FROM pg_catalog.pg_attribute a
        LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid IN ((SELECT oid FROM s), pg_catalog.to_regclass(:live)) AND a.attnum > 0 AND NOT a.attisdropped
        GROUP BY a.attrelid),
     parts AS (  -- the table, its indexes, constraints and defaults: what pg_depend records calls of
        SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid AS classid, oid AS objid FROM s
        UNION ALL SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, x.indexrelid
                  FROM pg_catalog.pg_index x WHERE x.indrelid = (SELECT oid FROM s)
        UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid, k.oid
                  FROM pg_catalog.pg_constraint k WHERE k.conrelid = (SELECT oid FROM s)
        UNION ALL SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass::pg_catalog.oid, d.oid
                  FROM pg_catalog.pg_attrdef d WHERE d.adrelid = (SELECT oid FROM s))
SELECT CASE
    WHEN s.relowner <> (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
        THEN pg_catalog.format('it belongs to %s, not to %s', pg_catalog.pg_get_userbyid(s.relowner), current_user)
    WHEN s.relkind <> 'r' THEN 'it is not a plain table'
    WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = s.oid) THEN 'it has triggers'
    WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = s.oid) THEN 'it has rules'
    WHEN s.relrowsecurity OR EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = s.oid)
        THEN 'it has row-level security policies'
    WHEN s.relispartition OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE s.oid IN (i.inhrelid, i.inhparent))
        THEN 'it inherits or is inherited from'
    WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conrelid = s.oid AND k.contype NOT IN ('p', 'n'))
        THEN 'it has constraints a shadow does not have'
    WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN parts USING (classid, objid)
                 LEFT JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                      AND f.oid = d.refobjid
                 LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
                      AND o.oid = d.refobjid
                 WHERE COALESCE(f.pronamespace, o.oprnamespace) <> 'pg_catalog'::pg_catalog.regnamespace)
        THEN 'it calls functions outside pg_catalog'
    WHEN (SELECT columns FROM cols WHERE attrelid = s.oid)
         IS DISTINCT FROM (SELECT columns FROM cols WHERE attrelid = pg_catalog.to_regclass(:live))
        THEN 'its columns differ from the live table''s'
END AS why
FROM s
"""


def _untrusted(conn: Connection, spec: TableSpec) -> str | None:
    """Why `spec`'s existing shadow must not be written or read, or None if it can (see `_UNTRUSTED_SQL`)."""
    row = conn.execute(
        text(_UNTRUSTED_SQL), {"shadow": shadow_name(spec.name), "live": f"public.{spec.name}"}
    ).one_or_none()
    return "it does not exist" if row is None else row.why


def create_shadow(conn: Connection, projection: Projection, spec: TableSpec) -> None:
    """A fresh shadow of `spec`'s table, built for replaying into: the same columns and defaults,
    the primary key (upserts and lookups by key), the indexes the projection's own lookups need,
    and nothing else. The live table's search and filter indexes and its generated columns only
    serve queries, which never read a shadow, and maintaining them was most of a rebuild's
    database time; the swap compares and copies the written columns only.
    A table of that name left behind is dropped (which runs none of its code); one this role may
    not drop was not made by a rebuild of this role, and the rebuild is refused."""
    shadow = shadow_name(spec.name)
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {shadow}")
    except DBAPIError as exc:
        if not isinstance(exc.orig, psycopg2.errors.InsufficientPrivilege):
            raise
        who = conn.execute(
            text(
                "SELECT pg_catalog.pg_get_userbyid(relowner) AS owner, current_user AS me FROM pg_catalog.pg_class"
                " WHERE oid = pg_catalog.to_regclass(:t)"
            ),
            {"t": shadow},
        ).one()
        raise RebuildFailed(
            f"The table {shadow} was not created by a rebuild of {who.me} and {who.me} may not drop it "
            f"(it belongs to {who.owner}); have the database owner drop it, then rebuild {projection.name} again."
        ) from exc
    conn.exec_driver_sql(f"CREATE TABLE {shadow} (LIKE {spec.name} INCLUDING DEFAULTS)")
    conn.exec_driver_sql(f"ALTER TABLE {shadow} ADD PRIMARY KEY ({', '.join(spec.key)})")
    for index in projection.lookup_indexes.get(spec.name, ()):
        conn.exec_driver_sql(index.format(table=shadow))


class _TailFailed(Exception):
    pass


def _swap(engine: Engine, projection: Projection, shadow: ShadowTarget) -> dict[str, int] | None:
    """Catch the shadow up and swap it in, atomically; None if an event of the tail failed (the
    caller replays it through `step`, which retries or parks it, and tries again)."""
    name = projection.name
    try:
        with engine.begin() as conn:
            live = lock_checkpoint(conn, name)
            old = locked_cursor(live)
            # A split projection's partitions run on their own rows: wait for their batches and
            # keep new ones out until the swap commits (they then start at its cursor).
            lock_partition_rows(conn, name)
            cursor = shadow.start(conn)
            if cursor is None:
                raise RebuildFailed(f"The rebuild of {name} was reset while it ran; start it again.")
            for spec in projection.tables:  # written to and read from below: checked in this transaction
                if why := _untrusted(conn, spec):
                    raise RebuildFailed(
                        f"The shadow table {shadow_name(spec.name)} was changed while {name} was being rebuilt "
                        f"({why}); rebuild {name} again, and it starts afresh."
                    )
            while events := read_events(conn, cursor, SWAP_TAIL_LIMIT, projection.handled_types):
                skip = shadow.skip_positions(conn, events)
                to_apply = [e for e in events if e.position not in skip]
                try:
                    if to_apply:
                        projection.apply(conn, to_apply, shadow.tables)
                except Exception as exc:
                    raise _TailFailed(describe_error(exc)) from exc
                shadow.advance(conn, events[-1].cursor, to_apply, len(events))
                cursor = events[-1].cursor
            changed = {
                spec.name: _replace_contents(conn, spec, shadow_name(spec.name)) for spec in projection.tables
            }
            applied = conn.execute(
                text("SELECT rebuild_applied FROM projection_control WHERE name = :n"), {"n": name}
            ).scalar_one()
            # A split projection faulted in front of an event of one partition: the replay went
            # through it, so it applies now (read before the partitions move to the swap's cursor).
            in_front = parked_in_front(conn, name, cursor) if live.state == "faulted" else []
            replace_checkpoint(conn, name, cursor, applied)
            if live.partitions != 1:
                reset_partitions(conn, name, int(live.partitions), cursor, applied)
            if in_front:
                conn.execute(
                    text(
                        "UPDATE parked_events SET status = 'retried', resolved_at = clock_timestamp()"
                        " WHERE id = ANY(CAST(:ids AS bigint[]))"
                    ),
                    {"ids": in_front},
                )
            if live.state == "faulted" and cursor > old and live.partitions == 1:
                # The replay went through the event the projection had faulted on: it applies now.
                conn.execute(
                    text(
                        """
                        UPDATE parked_events SET status = 'retried', resolved_at = clock_timestamp()
                        WHERE projection = :n AND status = 'parked' AND event_id = (
                            SELECT event_id FROM events WHERE (txid, position) > (CAST(:txid AS xid8), :position)
                            ORDER BY txid, position LIMIT 1)
                        """
                    ),
                    {"n": name, "txid": str(old.txid), "position": old.position},
                )
            for spec in projection.tables:
                conn.exec_driver_sql(f"DROP TABLE {shadow_name(spec.name)}")
            conn.execute(
                text(
                    """
                    UPDATE projection_control
                       SET state = CASE WHEN state = 'faulted' THEN 'running' ELSE state END,
                           rebuild_txid = NULL, rebuild_position = NULL, rebuild_requested_at = NULL,
                           rebuild_heartbeat_at = NULL, rebuild_owner = NULL, rebuild_error = NULL,
                           rebuild_finished_at = clock_timestamp(), code_version = :version
                     WHERE name = :n
                    """
                ),
                {"n": name, "version": projection.version},
            )
            return changed
    except _TailFailed as exc:
        log.warning("rebuild of %s: an event of the last stretch failed (%s); replaying it first", name, exc)
        return None


def _replace_contents(conn: Connection, spec: TableSpec, shadow: str) -> int:
    cols = ", ".join(spec.column_names)
    key = ", ".join(spec.key)
    deleted = conn.execute(
        text(
            f"""
            DELETE FROM {spec.name} WHERE ({key}) IN (
                SELECT {key} FROM (SELECT {cols} FROM {spec.name} EXCEPT SELECT {cols} FROM {shadow}) AS stale)
            """
        )
    ).rowcount
    inserted = conn.execute(
        text(
            f"INSERT INTO {spec.name} ({cols}) SELECT {cols} FROM {shadow} EXCEPT SELECT {cols} FROM {spec.name}"
        )
    ).rowcount
    return deleted + inserted


def _mark_stopped(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE projection_control SET rebuild_heartbeat_at = NULL WHERE name = :n"), {"n": name}
        )


def _record_failure(engine: Engine, name: str, exc: BaseException) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    """
                    UPDATE projection_control
                       SET rebuild_error = COALESCE(rebuild_error, :e), rebuild_requested_at = NULL,
                           rebuild_heartbeat_at = NULL
                     WHERE name = :n
                    """
                ),
                {"n": name, "e": describe_error(exc)},
            )
    except Exception:
        log.exception("could not record the failed rebuild of %s", name)
