"""Parked events (the dead-letter table): list them, retry them, discard them.

A parked event is either behind its projection's checkpoint (policy "skip": the projection went on
without it) or the very next event (policy "fault": the projection stopped in front of it).
Retrying applies it to the live tables now, in the projection's checkpoint-row lock; for a fault it
also moves the checkpoint past it and the projection runs again. Discarding marks it so; for a
fault it moves the checkpoint past it without applying it.

Parking itself (`park_event`, and `park_live` for the live tables with the projection's policy) is
here too: batches.py and rebuild.py decide *when* an event is parked, this module writes it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from cqrs_core.eventlog.cursors import LogCursor, add_applied, lock_checkpoint, locked_cursor, set_checkpoint
from cqrs_core.eventlog.partitions import (
    add_partition_applied,
    lock_partition,
    partition_of,
    refresh_low_water,
    set_partition_checkpoint,
)
from cqrs_core.eventlog.reader import LoggedEvent
from cqrs_core.eventlog.store import EventStore, StoredEvent
from cqrs_core.infra.errors import ValidationError
from cqrs_core.projections.engine.failures import describe_error, is_transient
from cqrs_core.projections.engine.locks import REBUILD_NAMESPACE, is_held
from cqrs_core.projections.registry import get_projection

log = logging.getLogger(__name__)

PARKED_STATUSES = ("parked", "retried", "discarded")

MAX_PARKED_ID = 2**63 - 1  # parked_events.id is a bigint
# How much of a rejected id the validation message repeats (the CLI passes what it was given).
_BAD_ID_ECHO_CHARS = 40


@dataclass(frozen=True)
class ParkedEvent:
    id: int
    projection: str
    position: int
    event_id: uuid.UUID
    event_type: str
    error: str
    attempts: int
    parked_at: datetime
    status: str
    resolved_at: datetime | None


# ---------------------------------------------------------------- parking an event

PARK_SQL = text(
    """
    INSERT INTO parked_events (projection, position, txid, event_id, event_type, error, attempts)
    VALUES (:n, :position, CAST(:txid AS xid8), :event_id, :event_type, :error, :attempts)
    ON CONFLICT (projection, event_id) DO UPDATE
       SET status = 'parked', error = EXCLUDED.error, attempts = parked_events.attempts + EXCLUDED.attempts,
           parked_at = EXCLUDED.parked_at, resolved_at = NULL
    """
)


def park_event(conn: Connection, projection: str, event: LoggedEvent, error: str, attempts: int) -> None:
    """Record (or re-open) `event` as parked for `projection`, in the caller's transaction."""
    conn.execute(
        PARK_SQL,
        {
            "n": projection,
            "position": event.position,
            "txid": str(event.txid),
            "event_id": event.event_id,
            "event_type": event.event_type,
            "error": error,
            "attempts": attempts,
        },
    )


def park_live(conn: Connection, name: str, event: LoggedEvent, error: str, attempts: int) -> bool:
    """Park an event of the live projection `name`, note the error on its control row, and apply
    its failure policy: True = "skip" (go on without it), False = "fault" (the projection is
    faulted and stops in front of it)."""
    policy = conn.execute(
        text("SELECT failure_policy FROM projection_control WHERE name = :n"), {"n": name}
    ).scalar_one()
    park_event(conn, name, event, error, attempts)
    conn.execute(
        text(
            """
            UPDATE projection_control
               SET last_error = :error, last_error_at = clock_timestamp(),
                   state = CASE WHEN :fault THEN 'faulted' ELSE state END
             WHERE name = :n
            """
        ),
        {
            "n": name,
            "error": f"position {event.position} ({event.event_type}): {error}",
            "fault": policy == "fault",
        },
    )
    return policy == "skip"


def parked_of_streams(conn: Connection, projection: str, streams: Sequence[str]) -> dict[str, frozenset]:
    """Per stream of `streams`, the parked-event rows of `projection` for its events, as
    (position, status) pairs (streams without any are absent). Two reads that agree mean nobody
    retried, discarded or parked one of those events in between."""
    if not streams:
        return {}
    rows = conn.execute(
        text(
            """
            SELECT e.stream_id, p.position, p.status
            FROM parked_events p JOIN events e ON e.position = p.position AND e.txid = p.txid
            WHERE p.projection = :n AND e.stream_id = ANY(CAST(:s AS text[]))
            """
        ),
        {"n": projection, "s": list(streams)},
    )
    found: dict[str, set[tuple[int, str]]] = {}
    for stream_id, position, status in rows:
        found.setdefault(stream_id, set()).add((position, status))
    return {stream_id: frozenset(pairs) for stream_id, pairs in found.items()}


# ---------------------------------------------------------------- operating parked events


def checked_ids(ids: Sequence[int]) -> list[int]:
    """The ids as the database takes them; one out of range (the CLI passes what it was given)
    is a validation error, not a database error."""
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= MAX_PARKED_ID:
            raise ValidationError(
                f"Parked event ids are whole numbers from 1 to {MAX_PARKED_ID:,}; "
                f"{str(i)[:_BAD_ID_ECHO_CHARS]} is not one."
            )
    return list(ids)


_COLUMNS = "id, projection, position, event_id, event_type, error, attempts, parked_at, status, resolved_at"


def list_parked(
    engine: Engine, projection: str | None = None, status: str | None = "parked"
) -> list[ParkedEvent]:
    """Parked events, oldest first; `status=None` lists every status."""
    if projection is not None:
        get_projection(projection)
    if status is not None and status not in PARKED_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(PARKED_STATUSES)}")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"""
                SELECT {_COLUMNS} FROM parked_events
                WHERE (CAST(:p AS text) IS NULL OR projection = :p) AND (CAST(:s AS text) IS NULL OR status = :s)
                ORDER BY parked_at, id
                """
            ),
            {"p": projection, "s": status},
        )
        return [ParkedEvent(**r._mapping) for r in rows]


def _open_rows(conn: Connection, ids: Sequence[int] | None) -> list:
    return list(
        conn.execute(
            text(
                f"""
                SELECT {_COLUMNS}, txid::text AS txid FROM parked_events
                WHERE status = 'parked' AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
                ORDER BY parked_events.projection, parked_events.txid, parked_events.position
                """
            ),
            {"ids": list(ids) if ids is not None else None},
        )
    )


def _event_at(store: EventStore, conn: Connection, txid: int, position: int) -> StoredEvent | None:
    # The cursor just before (txid, position) in log order makes it the first event read.
    events = store.read_log(LogCursor(txid, position - 1), limit=1, conn=conn)
    return events[0] if events and events[0].position == position else None


def _next_event(store: EventStore, conn: Connection, checkpoint: LogCursor) -> StoredEvent | None:
    events = store.read_log(checkpoint, limit=1, conn=conn)
    return events[0] if events else None


def _unfault(conn: Connection, name: str) -> None:
    conn.execute(
        text("UPDATE projection_control SET state = 'running' WHERE name = :n AND state = 'faulted'"),
        {"n": name},
    )


class _CheckpointOf:
    """The checkpoint a parked event is measured against, in the caller's transaction, which
    holds the projection's checkpoint row (`cp`): that row, or for a projection split into
    partitions the row of the event's own partition (locked here, after it)."""

    def __init__(self, conn: Connection, name: str, cp: Any, stream_id: str | None) -> None:
        self.conn, self.name = conn, name
        self.partition: int | None = None
        self.cursor = locked_cursor(cp)
        if cp.partitions > 1 and stream_id is not None:
            self.partition = partition_of(stream_id, cp.partitions)
            row = lock_partition(conn, name, self.partition, cp.partitions)
            if row is not None:
                self.cursor = LogCursor(int(row.last_txid), row.last_position)

    def move(self, cursor: LogCursor, applied: int) -> None:
        if self.partition is None:
            set_checkpoint(self.conn, self.name, cursor, applied)
            return
        set_partition_checkpoint(self.conn, self.name, self.partition, cursor, applied)
        refresh_low_water(self.conn, self.name)

    def count(self, applied: int) -> None:
        if self.partition is None:
            add_applied(self.conn, self.name, applied)
        else:
            add_partition_applied(self.conn, self.name, self.partition, applied)


def retry(engine: Engine, ids: Sequence[int] | None = None) -> int:
    """Apply parked events again (all, or those in `ids`); returns how many now succeeded.
    One that fails again stays parked with its attempt count raised and the new error."""
    store = EventStore(engine)
    with engine.connect() as conn:
        rows = _open_rows(conn, ids)
    succeeded = 0
    for row in rows:
        projection = get_projection(row.projection)
        try:
            with engine.begin() as conn:
                cp = lock_checkpoint(conn, row.projection)
                if is_held(conn, REBUILD_NAMESPACE, row.projection):
                    # The shadow has already decided about this event; applying it to the live
                    # tables now would be lost at the swap.
                    log.warning("not retrying parked event %d: %s is being rebuilt", row.id, row.projection)
                    continue
                event = _event_at(store, conn, int(row.txid), row.position)
                if event is None:
                    continue
                owner = _CheckpointOf(conn, row.projection, cp, event.stream_id)
                checkpoint = owner.cursor
                live = {t.name: t.name for t in projection.tables}
                if event.cursor > checkpoint:
                    # Fault policy: it must be the very next event; anything else waits for the runner.
                    upcoming = _next_event(store, conn, checkpoint)
                    if upcoming is None or upcoming.event_id != event.event_id:
                        _unfault(conn, row.projection)
                        continue
                    projection.apply(conn, [event], live)
                    owner.move(event.cursor, 1)
                    _unfault(conn, row.projection)
                else:
                    projection.apply(conn, [event], live)
                    owner.count(1)
                conn.execute(
                    text(
                        "UPDATE parked_events SET status = 'retried', resolved_at = clock_timestamp() WHERE id = :id"
                    ),
                    {"id": row.id},
                )
            succeeded += 1
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("parked event %d failed again: %s", row.id, describe_error(exc))
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE parked_events SET attempts = attempts + 1, error = :e WHERE id = :id"),
                    {"id": row.id, "e": describe_error(exc)},
                )
    return succeeded


def discard(engine: Engine, ids: Sequence[int]) -> int:
    """Give up on parked events; returns how many were discarded. A projection faulted on one
    moves past it without applying it."""
    if not ids:
        raise ValidationError("Name the parked events to discard (their ids).")
    store = EventStore(engine)
    with engine.connect() as conn:
        rows = _open_rows(conn, ids)
    discarded = 0
    for row in rows:
        with engine.begin() as conn:
            cp = lock_checkpoint(conn, row.projection)
            event = _event_at(store, conn, int(row.txid), row.position)
            owner = _CheckpointOf(conn, row.projection, cp, event.stream_id if event is not None else None)
            checkpoint = owner.cursor
            if LogCursor(int(row.txid), row.position) > checkpoint:
                upcoming = _next_event(store, conn, checkpoint)
                if upcoming is not None and upcoming.event_id == row.event_id:
                    owner.move(upcoming.cursor, 0)
                _unfault(conn, row.projection)
            conn.execute(
                text(
                    "UPDATE parked_events SET status = 'discarded', resolved_at = clock_timestamp() WHERE id = :id"
                ),
                {"id": row.id},
            )
        discarded += 1
    return discarded
