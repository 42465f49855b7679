"""Places in the log, and where each projection is in it: one home for the cursor and its SQL.

A `LogCursor` is a place in the gap-free log order, `(txid, position)` (see
`cqrs_core.eventlog.store` for why a bare position is not enough). A projection's cursor is its
row of `projection_checkpoints` (`last_txid`, `last_position`), written in the same transaction
as the rows it applied. Everything that reads or moves a checkpoint, asks for the log's head,
turns a position into a cursor, or asks whether projections have applied an event is here, so
the comparison is always made on cursors and each statement is written once.

Statements on the measured paths (a projection batch: `lock_checkpoint`, `set_checkpoint`; a
query: `checkpoints_json_sql`, `HEAD_SQL`) keep their text: only where they are defined moved.
The gap-free walk itself is `cqrs_core.eventlog.store.LOG_WALK`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, text


class LogCursor(NamedTuple):
    """A place in the gap-free log order: (transaction id, position). Compares as the pair it is."""

    txid: int = 0
    position: int = 0


# ---------------------------------------------------------------- the log

# The highest committed position (0 for an empty log). Driver style, no parameters: used on its
# own and as a scalar subquery.
HEAD_SQL = "SELECT COALESCE(max(position), 0) FROM events"

_TXID_AT_SQL = text("SELECT txid::text FROM events WHERE position = :p")

_COMMITTED_TIP_SQL = text(
    "SELECT txid::text AS txid, position FROM events ORDER BY events.txid DESC, events.position DESC LIMIT 1"
)


def head(conn: Connection) -> int:
    """The highest position committed (a sequence peek is not used)."""
    return int(conn.exec_driver_sql(HEAD_SQL).scalar_one())


def cursor_at(conn: Connection, position: int) -> LogCursor | None:
    """The cursor of the event at `position` (its txid with it); None if there is none (yet)."""
    row = conn.execute(_TXID_AT_SQL, {"p": position}).first()
    return None if row is None else LogCursor(int(row[0]), position)


def committed_tip(conn: Connection) -> LogCursor:
    """The cursor of the last event committed now. It may still be above the gap-free horizon
    (an older transaction is open); reaching it then means waiting for that."""
    row = conn.execute(_COMMITTED_TIP_SQL).first()
    return LogCursor() if row is None else LogCursor(int(row.txid), row.position)


# ---------------------------------------------------------------- reading checkpoints

_CHECKPOINT_COLUMNS = "name, last_txid::text AS txid, last_position"
# Driver style (%(names)s): the same text through SQLAlchemy or a raw cursor.
CHECKPOINTS_SQL = f"SELECT {_CHECKPOINT_COLUMNS} FROM projection_checkpoints WHERE name = ANY(%(names)s)"
ALL_CHECKPOINTS_SQL = f"SELECT {_CHECKPOINT_COLUMNS} FROM projection_checkpoints ORDER BY name"


def checkpoints_json_sql(names_param: str) -> str:
    """A statement giving the checkpoints of the projections in the driver parameter
    `names_param` as one JSON object {name: [txid as text, position]} (NULL if none); a query
    selects it as a scalar subquery so its cursors come from the snapshot it read. Decode with
    `cursors_from_json`."""
    return (
        "SELECT json_object_agg(name, json_build_array(last_txid::text, last_position)) "
        f"FROM projection_checkpoints WHERE name = ANY(%({names_param})s)"
    )


def cursors_from_json(raw: Mapping[str, Sequence[Any]] | None) -> dict[str, LogCursor]:
    return {name: LogCursor(int(txid), int(pos)) for name, (txid, pos) in (raw or {}).items()}


def cursors_from_rows(rows: Any) -> dict[str, LogCursor]:
    """{name: cursor} from rows (name, txid, last_position) of CHECKPOINTS_SQL or ALL_CHECKPOINTS_SQL."""
    return {name: LogCursor(int(txid), int(position)) for name, txid, position in rows}


def read_checkpoints(conn: Connection, names: Sequence[str]) -> dict[str, LogCursor]:
    """The checkpoint cursor of each projection of `names` that has a checkpoint row."""
    return cursors_from_rows(conn.exec_driver_sql(CHECKPOINTS_SQL, {"names": list(names)}))


def read_checkpoint(conn: Connection, name: str) -> LogCursor:
    """The checkpoint cursor of projection `name` (its row must exist: NoResultFound if not)."""
    row = conn.exec_driver_sql(CHECKPOINTS_SQL, {"names": [name]}).one()
    return LogCursor(int(row.txid), int(row.last_position))


# ---------------------------------------------------------------- applied up to


def has_applied(conn: Connection, position: int, names: Sequence[str]) -> bool:
    """Read-your-writes: True iff every projection in `names` (distinct) has applied or passed
    the event at `position`, comparing cursors (txid, position), not bare positions."""
    if position <= 0:
        return True
    row = conn.execute(
        text(
            """
            SELECT count(*) AS passed
            FROM events e
            JOIN projection_checkpoints c
              ON c.name = ANY(CAST(:names AS text[]))
             AND (c.last_txid, c.last_position) >= (e.txid, e.position)
            WHERE e.position = :position
            """
        ),
        {"names": list(names), "position": position},
    ).one()
    return int(row.passed) == len(names)


def running_behind(conn: Connection, names: Sequence[str], target: LogCursor) -> list[str]:
    """Of `names`, the projections meant to run (not paused, not faulted) whose checkpoint is
    before `target`."""
    return list(
        conn.execute(
            text(
                """
                SELECT c.name FROM projection_checkpoints c JOIN projection_control p USING (name)
                WHERE c.name = ANY(CAST(:names AS text[]))
                  AND p.desired_state = 'running' AND p.state <> 'faulted'
                  AND (c.last_txid, c.last_position) < (CAST(:txid AS xid8), :position)
                """
            ),
            {"names": list(names), "txid": str(target.txid), "position": target.position},
        ).scalars()
    )


# ---------------------------------------------------------------- writing checkpoints


def ensure_checkpoint(conn: Connection, name: str) -> None:
    """Give projection `name` a checkpoint row at the origin unless it has one."""
    conn.execute(
        text("INSERT INTO projection_checkpoints (name) VALUES (:n) ON CONFLICT DO NOTHING"), {"n": name}
    )


# Projection transactions commit without waiting for the WAL flush (synchronous_commit off, for
# this transaction only). Safe here: a read model is derived data, and its rows and checkpoint are
# in the same transaction, so a server crash loses both or neither and the projection simply
# applies those events again. It takes the fsync (milliseconds) out of every batch.
ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true)"


def lock_checkpoint(conn: Connection, name: str) -> Any:
    """Lock a projection's checkpoint row for this transaction; returns it with its control row
    (and sets the transaction's commit to ASYNC_COMMIT). `partitions` > 1 means the projection is
    split (`partitions.py`): the row's cursor is then only the partitions' low-water mark."""
    return conn.execute(
        text(
            f"""
            SELECT c.last_txid::text AS last_txid, c.last_position, c.events_applied, c.partitions,
                   p.desired_state, p.state, p.failure_policy, {ASYNC_COMMIT} AS async_commit
            FROM projection_checkpoints c JOIN projection_control p USING (name)
            WHERE c.name = :n
            FOR UPDATE OF c
            """
        ),
        {"n": name},
    ).one()


def locked_cursor(row: Any) -> LogCursor:
    """The cursor of a row returned by `lock_checkpoint`."""
    return LogCursor(int(row.last_txid), row.last_position)


def set_checkpoint(
    conn: Connection,
    name: str,
    cursor: LogCursor,
    applied: int,
    resolved: Sequence[int] = (),
    *,
    resolved_after: LogCursor | None = None,
) -> None:
    """Move the checkpoint; events of `resolved` positions that were parked are now applied
    (with `resolved_after`: every parked event after that cursor, up to `cursor`)."""
    if resolved_after is not None:
        match = (
            "(txid, position) > (CAST(:from_txid AS xid8), :from_position)"
            " AND (txid, position) <= (CAST(:txid AS xid8), :position)"
        )
        extra = {"from_txid": str(resolved_after.txid), "from_position": resolved_after.position}
    else:
        match = "position = ANY(CAST(:resolved AS bigint[]))"
        extra = {"resolved": list(resolved)}
    conn.execute(
        text(
            f"""
            WITH resolved AS (
                UPDATE parked_events SET status = 'retried', resolved_at = clock_timestamp()
                WHERE projection = :n AND status = 'parked' AND {match}
            )
            UPDATE projection_checkpoints
               SET last_txid = CAST(:txid AS xid8), last_position = :position,
                   events_applied = events_applied + :applied, updated_at = clock_timestamp()
             WHERE name = :n
            """
        ),
        {"n": name, "txid": str(cursor.txid), "position": cursor.position, "applied": applied, **extra},
    )


def replace_checkpoint(conn: Connection, name: str, cursor: LogCursor, events_applied: int) -> None:
    """Put the checkpoint at `cursor` with a new applied count (a rebuild's swap)."""
    conn.execute(
        text(
            """
            UPDATE projection_checkpoints
               SET last_txid = CAST(:txid AS xid8), last_position = :position, events_applied = :applied,
                   updated_at = clock_timestamp()
             WHERE name = :n
            """
        ),
        {"n": name, "txid": str(cursor.txid), "position": cursor.position, "applied": events_applied},
    )


def add_applied(conn: Connection, name: str, count: int) -> None:
    """Count `count` more events applied by projection `name` without moving its cursor (a
    parked event behind the checkpoint, applied on retry)."""
    conn.execute(
        text("UPDATE projection_checkpoints SET events_applied = events_applied + :k WHERE name = :n"),
        {"n": name, "k": count},
    )
