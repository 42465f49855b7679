"""The log stream by stream: walking the stream ids in order, and where each stream ends.

Continuous verification walks every stream of the log a sample at a time, so it needs "the next
streams after this one" without reading the events of the streams in between. PostgreSQL has no
skip scan over an index before version 18, so the walk is a recursive query that jumps from one
stream id to the next through the `(stream_id, version)` unique index: one index probe per
stream, whatever the streams' lengths. A stream's length is its highest version (versions start
at 1 and have no gaps), one backward probe of the same index."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

from sqlalchemy import Connection

from cqrs_core.eventlog.cursors import LogCursor


class StreamLength(NamedTuple):
    stream_id: str
    events: int


# The recursion stops as soon as the outer LIMIT has its rows (a CTE is read lazily). The walk
# starts past the prefix itself, since every id that starts with it sorts after it (a string
# sorts after its own prefix); streams without the prefix met after that are stepped over, not returned.
# `starts_with` rather than LIKE: a prefix needs no escaping of % and _.
_NEXT_STREAMS_SQL = """
    WITH RECURSIVE walk(stream_id) AS (
        (SELECT stream_id FROM events WHERE stream_id > GREATEST(%(after)s, %(prefix)s)
         ORDER BY stream_id LIMIT 1)
      UNION ALL
        SELECT (SELECT e.stream_id FROM events e WHERE e.stream_id > w.stream_id ORDER BY e.stream_id LIMIT 1)
        FROM walk w WHERE w.stream_id IS NOT NULL
    )
    SELECT w.stream_id, (SELECT max(e.version) FROM events e WHERE e.stream_id = w.stream_id)
    FROM walk w
    WHERE w.stream_id IS NOT NULL AND starts_with(w.stream_id, %(prefix)s)
    LIMIT %(limit)s"""


def next_streams(conn: Connection, after: str, limit: int, prefix: str = "") -> list[StreamLength]:
    """Up to `limit` stream ids after `after` (in the database's order of stream ids) that start
    with `prefix`, each with its number of events. Fewer than `limit` means the walk reached the
    last stream."""
    if limit <= 0:
        return []
    rows = conn.exec_driver_sql(_NEXT_STREAMS_SQL, {"after": after, "prefix": prefix, "limit": limit})
    return [StreamLength(stream_id, int(events)) for stream_id, events in rows]


_LENGTHS_SQL = """
    SELECT s.stream_id, (SELECT max(e.version) FROM events e WHERE e.stream_id = s.stream_id)
    FROM unnest(%(streams)s::text[]) AS s(stream_id)"""


def stream_lengths(conn: Connection, streams: Sequence[str]) -> dict[str, int]:
    """The number of events of each of `streams` (0 for one without events), in their order."""
    if not streams:
        return {}
    found: dict[str, int | None] = {
        stream_id: events
        for stream_id, events in conn.exec_driver_sql(_LENGTHS_SQL, {"streams": list(streams)})
    }
    return {s: int(found.get(s) or 0) for s in streams}


# Qualified: a bare `txid` in ORDER BY names the text output column, which sorts '993' after
# '1017' and would give a stream written across a digit boundary an older event as its last.
_LATEST_SQL = """
    SELECT DISTINCT ON (events.stream_id) events.stream_id, events.txid::text, events.position
    FROM events WHERE events.stream_id = ANY(%(streams)s)
    ORDER BY events.stream_id, events.txid DESC, events.position DESC"""


def latest_cursors(conn: Connection, streams: Collection[str]) -> dict[str, LogCursor]:
    """The cursor of each stream's last event visible to this transaction (a stream without
    events is absent)."""
    if not streams:
        return {}
    rows = conn.exec_driver_sql(_LATEST_SQL, {"streams": sorted(streams)})
    return {stream_id: LogCursor(int(txid), int(position)) for stream_id, txid, position in rows}
