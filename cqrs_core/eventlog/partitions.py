"""Partitions of a projection: which partition a stream belongs to, and the partitions' own
checkpoints (`projection_partitions`, migration 0017). Like `cursors.py`, the one home of this SQL.

A projection split into K partitions keeps one cursor per partition. Each partition walks the
*whole* log in the gap-free order (`read_events`, the same walk and horizon as an unpartitioned
projection) and applies only the events of its own streams; the others move its cursor without
being applied. So every partition's cursor keeps the meaning of an ordinary checkpoint ("every
event of my streams at or before it is applied, none after"), events of one stream are applied in
log order by one partition, and a partition with no new events of its own still moves with the
log. The projection's own checkpoint row (`projection_checkpoints`) holds the low-water mark, the
lowest partition cursor (`refresh_low_water`): everything at or before it is applied, so
read-your-writes, lag and the query cache read that row as they always did.

The hash is CRC-32 of the stream id (stable across processes and Python versions, unlike
`hash()`), modulo K."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, text

from cqrs_core.eventlog.cursors import ASYNC_COMMIT, LogCursor

# At most this many partitions per projection (the table's CHECK says the same).
MAX_PARTITIONS = 64

_partition_memo: dict[tuple[str, int], int] = {}
_MEMO_LIMIT = 200_000


def partition_of(stream_id: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) the events of `stream_id` belong to."""
    if partitions <= 1:
        return 0
    key = (stream_id, partitions)
    found = _partition_memo.get(key)
    if found is None:
        found = zlib.crc32(stream_id.encode()) % partitions
        if len(_partition_memo) >= _MEMO_LIMIT:
            _partition_memo.clear()
        _partition_memo[key] = found
    return found


class PartitionRow(NamedTuple):
    """One partition of a projection as `projection_partitions` holds it."""

    name: str
    partition: int
    partitions: int
    cursor: LogCursor
    events_applied: int
    owner: str | None
    heartbeat_at: Any


# ---------------------------------------------------------------- the layout


def layouts(conn: Connection, names: Sequence[str]) -> dict[str, int]:
    """{name: number of partitions} of the projections of `names` that have a checkpoint row."""
    rows = conn.execute(
        text("SELECT name, partitions FROM projection_checkpoints WHERE name = ANY(CAST(:names AS text[]))"),
        {"names": list(names)},
    )
    return {r.name: int(r.partitions) for r in rows}


def set_layout(conn: Connection, name: str, partitions: int) -> bool:
    """Split projection `name` into `partitions` (1: not split), if that can be done without
    applying an event twice or skipping one; returns whether the layout is `partitions` now.

    Locks the checkpoint row first (an unpartitioned batch holds it while it runs, and reads the
    layout from it), then every partition row (a partition batch holds its own). From one
    partition (its cursor covers every stream) or from partitions that all stand at the same
    cursor, the new partitions all start at that cursor. Partitions at different cursors cannot
    be merged without re-applying events: the layout stays until they meet (a quiet log) or a
    rebuild replaces everything (`reset_partitions`)."""
    row = conn.execute(
        text(
            "SELECT partitions, last_txid::text AS txid, last_position, events_applied"
            " FROM projection_checkpoints WHERE name = :n FOR UPDATE"
        ),
        {"n": name},
    ).one()
    current = int(row.partitions)
    if current == partitions:
        return True
    if current == 1:
        start, applied = LogCursor(int(row.txid), row.last_position), int(row.events_applied)
    else:
        parts = conn.execute(
            text(
                "SELECT last_txid::text AS txid, last_position FROM projection_partitions"
                " WHERE name = :n FOR UPDATE"
            ),
            {"n": name},
        ).all()
        found = {LogCursor(int(r.txid), r.last_position) for r in parts}
        if len(found) > 1:
            return False
        start = found.pop() if found else LogCursor()
        applied = int(
            conn.execute(
                text("SELECT COALESCE(sum(events_applied), 0) FROM projection_partitions WHERE name = :n"),
                {"n": name},
            ).scalar_one()
        )
    _write_layout(conn, name, partitions, start, applied)
    return True


def reset_partitions(conn: Connection, name: str, partitions: int, cursor: LogCursor, applied: int) -> None:
    """Put projection `name` at `cursor` with `partitions` partitions, all at that cursor (a
    rebuild's swap, which holds the checkpoint row's lock and has replaced every row)."""
    lock_partition_rows(conn, name)
    _write_layout(conn, name, partitions, cursor, applied)


def lock_partition_rows(conn: Connection, name: str) -> None:
    """Lock every partition row of `name` for this transaction: its partitions' batches wait."""
    conn.execute(text("SELECT 1 FROM projection_partitions WHERE name = :n FOR UPDATE"), {"n": name}).all()


def parked_in_front(conn: Connection, name: str, upto: LogCursor) -> list[int]:
    """Ids of the parked events of split projection `name` that stand in front of their own
    partition's cursor (the fault policy stopped there) and at or before `upto`."""
    cursors = partition_cursors(conn, name)
    if not cursors:
        return []
    rows = conn.execute(
        text(
            """
            SELECT p.id, p.txid::text AS txid, p.position, e.stream_id
            FROM parked_events p JOIN events e ON e.position = p.position AND e.txid = p.txid
            WHERE p.projection = :n AND p.status = 'parked'
            """
        ),
        {"n": name},
    )
    k = len(cursors)
    return [
        r.id
        for r in rows
        if cursors[partition_of(r.stream_id, k)] < LogCursor(int(r.txid), r.position) <= upto
    ]


def _write_layout(conn: Connection, name: str, partitions: int, start: LogCursor, applied: int) -> None:
    conn.execute(text("DELETE FROM projection_partitions WHERE name = :n"), {"n": name})
    if partitions > 1:
        conn.execute(
            text(
                """
                INSERT INTO projection_partitions (name, partition, partitions, last_txid, last_position,
                                                   events_applied)
                SELECT :n, i, :k, CAST(:txid AS xid8), :position, CASE WHEN i = 0 THEN :applied ELSE 0 END
                FROM generate_series(0, :k - 1) AS i
                """
            ),
            {
                "n": name,
                "k": partitions,
                "txid": str(start.txid),
                "position": start.position,
                "applied": applied,
            },
        )
    conn.execute(
        text(
            """
            UPDATE projection_checkpoints
               SET partitions = :k, last_txid = CAST(:txid AS xid8), last_position = :position,
                   events_applied = :applied, updated_at = clock_timestamp()
             WHERE name = :n
            """
        ),
        {"n": name, "k": partitions, "txid": str(start.txid), "position": start.position, "applied": applied},
    )


# ---------------------------------------------------------------- a partition's batch


def lock_partition(conn: Connection, name: str, partition: int, partitions: int) -> Any | None:
    """Lock one partition's row for this transaction; returns it with the projection's control
    row (desired state, state), or None when the projection is no longer split that way (its
    layout changed: the caller applies nothing). Sets the transaction's commit to ASYNC_COMMIT."""
    return conn.execute(
        text(
            f"""
            SELECT c.last_txid::text AS last_txid, c.last_position, c.events_applied,
                   p.desired_state, p.state, p.failure_policy, {ASYNC_COMMIT} AS async_commit
            FROM projection_partitions c JOIN projection_control p USING (name)
            WHERE c.name = :n AND c.partition = :i AND c.partitions = :k
            FOR UPDATE OF c
            """
        ),
        {"n": name, "i": partition, "k": partitions},
    ).first()


def set_partition_checkpoint(
    conn: Connection, name: str, partition: int, cursor: LogCursor, applied: int, resolved: Sequence[int] = ()
) -> None:
    """Move one partition's cursor; parked events of `resolved` positions are now applied."""
    conn.execute(
        text(
            """
            WITH resolved AS (
                UPDATE parked_events SET status = 'retried', resolved_at = clock_timestamp()
                WHERE projection = :n AND status = 'parked' AND position = ANY(CAST(:resolved AS bigint[]))
            )
            UPDATE projection_partitions
               SET last_txid = CAST(:txid AS xid8), last_position = :position,
                   events_applied = events_applied + :applied, updated_at = clock_timestamp()
             WHERE name = :n AND partition = :i
            """
        ),
        {
            "n": name,
            "i": partition,
            "txid": str(cursor.txid),
            "position": cursor.position,
            "applied": applied,
            "resolved": list(resolved),
        },
    )


def add_partition_applied(conn: Connection, name: str, partition: int, count: int) -> None:
    """Count `count` more events applied by one partition without moving its cursor."""
    conn.execute(
        text(
            "UPDATE projection_partitions SET events_applied = events_applied + :k"
            " WHERE name = :n AND partition = :i"
        ),
        {"n": name, "i": partition, "k": count},
    )


def refresh_low_water(conn: Connection, name: str) -> None:
    """Move the projection's checkpoint row up to its lowest partition cursor (never back).

    Runs in its own short transaction after a partition's batch commits, not inside it (that
    would make every partition's batch wait for the one row). Concurrent refreshes may read
    each other's partitions from before a commit, but each value is a lower bound and the row
    only moves forward (the WHERE is re-checked on the latest row version), and the refresh
    after the last batch sees every partition: the row ends at the true low-water mark."""
    conn.execute(
        text(
            f"""
            UPDATE projection_checkpoints c
               SET last_txid = m.last_txid, last_position = m.last_position,
                   events_applied = m.applied, updated_at = clock_timestamp()
              FROM (SELECT last_txid, last_position,
                           (SELECT sum(events_applied) FROM projection_partitions WHERE name = :n) AS applied,
                           {ASYNC_COMMIT} AS async_commit
                      FROM projection_partitions WHERE name = :n
                     ORDER BY last_txid, last_position LIMIT 1) m
             WHERE c.name = :n AND c.partitions > 1
               AND (m.last_txid, m.last_position) > (c.last_txid, c.last_position)
            """
        ),
        {"n": name},
    )


# ---------------------------------------------------------------- reading partitions


def partition_rows(conn: Connection, names: Sequence[str]) -> dict[str, list[PartitionRow]]:
    """{name: its partitions in order} for the split projections of `names`."""
    rows = conn.execute(
        text(
            """
            SELECT name, partition, partitions, last_txid::text AS txid, last_position, events_applied,
                   owner, heartbeat_at
            FROM projection_partitions WHERE name = ANY(CAST(:names AS text[]))
            ORDER BY name, partition
            """
        ),
        {"names": list(names)},
    )
    out: dict[str, list[PartitionRow]] = {}
    for r in rows:
        out.setdefault(r.name, []).append(
            PartitionRow(
                r.name,
                r.partition,
                r.partitions,
                LogCursor(int(r.txid), r.last_position),
                int(r.events_applied),
                r.owner,
                r.heartbeat_at,
            )
        )
    return out


def partition_cursors(conn: Connection, name: str) -> dict[int, LogCursor]:
    """{partition: cursor} of a split projection (empty when it is not split)."""
    return {p.partition: p.cursor for p in partition_rows(conn, [name]).get(name, [])}


def partition_heartbeat(conn: Connection, owner: str, held: Sequence[tuple[str, int]]) -> None:
    """Record that `owner` holds the partitions of `held` ((name, partition) pairs) now."""
    if not held:
        return
    conn.execute(
        text(
            """
            UPDATE projection_partitions AS c SET owner = :owner, heartbeat_at = clock_timestamp()
              FROM unnest(CAST(:names AS text[]), CAST(:parts AS integer[])) AS h(name, partition)
             WHERE c.name = h.name AND c.partition = h.partition
            """
        ),
        {"owner": owner, "names": [n for n, _ in held], "parts": [i for _, i in held]},
    )


def release_partitions(conn: Connection, owner: str, held: Sequence[tuple[str, int]]) -> None:
    """Mark the partitions of `held` that `owner` held as unowned."""
    if not held:
        return
    conn.execute(
        text(
            """
            UPDATE projection_partitions AS c SET owner = NULL, heartbeat_at = NULL
              FROM unnest(CAST(:names AS text[]), CAST(:parts AS integer[])) AS h(name, partition)
             WHERE c.name = h.name AND c.partition = h.partition AND c.owner = :owner
            """
        ),
        {"owner": owner, "names": [n for n, _ in held], "parts": [i for _, i in held]},
    )
