"""Reading the log for projections: the same gap-free walk as `EventStore.read_log`, lighter.

A projection batch reads thousands of events, and most of the time of a catch-up went into turning
rows into `StoredEvent`s: four uuid columns parsed into `uuid.UUID` objects, every payload decoded,
a frozen dataclass built per row through SQLAlchemy's row machinery. Projections use a handful of
those fields, so this reader

* selects the same rows in the same `(txid, position)` order, below the same horizon
  (`pg_snapshot_xmin(pg_current_snapshot())`, see `cqrs_core.eventlog.store`), so the cursor
  semantics are identical: a batch is a prefix of the rest of the log and nothing is skipped;
* returns `LogEvent`s (slotted, attribute-compatible with `StoredEvent` for everything projections
  and parking use), with ids as text and without `command_id`/`causation_id`/`recorded_at`;
* decodes the payload only of events whose type the projection handles (`Projection.handled_types`);
  the other rows still come back — type and cursor only — so the cursor moves past them;
* leaves a slot (`decoded`) for the consumer's own reading of the payload: projections keep the
  typed domain event there, so an event of the shared window is decoded once for all of them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection

from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.eventlog.store import LOG_WALK
from cqrs_core.infra.db import driver_connection


class LoggedEvent(Protocol):
    """An event as projections and parking see it: a `LogEvent` from this reader or a `StoredEvent`
    from the store (ids as text or as `uuid.UUID`). `payload` is the decoded payload for the types
    the projection handles (a `LogEvent` of another type has None there)."""

    @property
    def position(self) -> int: ...
    @property
    def txid(self) -> int: ...
    @property
    def stream_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def event_type(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def event_id(self) -> uuid.UUID | str: ...
    @property
    def correlation_id(self) -> uuid.UUID | str | None: ...
    @property
    def actor(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def cursor(self) -> LogCursor: ...


class LogEvent:
    """One event of the log as a projection sees it (ids as canonical text).

    `decoded` starts as None and is the consumer's to fill: a memo of what it decoded from
    `payload` (the projections' typed domain event). This layer never sets or reads it."""

    __slots__ = (
        "position",
        "txid",
        "stream_id",
        "version",
        "event_type",
        "schema_version",
        "payload",
        "event_id",
        "correlation_id",
        "actor",
        "occurred_at",
        "decoded",
    )

    def __init__(self, row: tuple) -> None:
        (
            self.position,
            txid,
            self.stream_id,
            self.version,
            self.event_type,
            self.schema_version,
            self.payload,
            self.event_id,
            self.correlation_id,
            self.actor,
            self.occurred_at,
        ) = row
        self.txid = int(txid)
        self.decoded: Any = None

    @property
    def cursor(self) -> LogCursor:
        return LogCursor(self.txid, self.position)

    def __repr__(self) -> str:
        return f"LogEvent({self.position}, {self.event_type}, {self.stream_id})"


_COLUMNS = """
    SELECT position, txid::text, stream_id, version, event_type, schema_version, {payload},
           event_id::text, correlation_id::text, actor, occurred_at
    FROM events
"""
_SELECT = _COLUMNS + LOG_WALK  # no braces in it: safe for .format below
_ALL_PAYLOADS = _SELECT.format(payload="payload")
_SOME_PAYLOADS = _SELECT.format(payload="CASE WHEN event_type = ANY(%(types)s) THEN payload END")


def read_events(
    conn: Connection, after: LogCursor, limit: int, handled: Collection[str] | None = None
) -> list[LogEvent]:
    """Up to `limit` events after `after` in gap-free order, inside `conn`'s transaction.
    Events whose type is not in `handled` (None: all) come back with `payload` None."""
    params: dict[str, Any] = {"txid": str(after.txid), "pos": after.position, "limit": limit}
    if handled is None:
        sql = _ALL_PAYLOADS
    else:
        sql = _SOME_PAYLOADS
        params["types"] = sorted(handled)
    # The bare driver cursor (in `conn`'s transaction): SQLAlchemy's row objects cost more than
    # the rows themselves at thousands per batch. Driver errors propagate as psycopg2 errors,
    # which `is_transient` and `translate_db_errors` understand.
    cur = driver_connection(conn.connection).cursor()
    try:
        cur.execute(sql, params)
        rows = cur.fetchall()
    finally:
        cur.close()
    return [LogEvent(r) for r in rows]


# Every event of some streams up to a cursor, in log order. Events at or before a projection's
# checkpoint are below the gap-free horizon (the projection read them there), so this needs no
# horizon of its own: a checkpoint passed as `upto` makes it exactly what the projection applied.
_STREAMS_UP_TO = (
    _COLUMNS.format(payload="payload")
    + """
    WHERE stream_id = ANY(%(streams)s)
      AND (events.txid, events.position) <= (CAST(%(txid)s AS xid8), %(pos)s)
    ORDER BY events.txid, events.position"""
)


def read_streams(conn: Connection, streams: Collection[str], upto: LogCursor) -> list[LogEvent]:
    """Every event of `streams` at or before `upto`, in gap-free order, payloads decoded (one
    statement, answered by the `(stream_id, version)` index). For replaying a sample of streams."""
    if not streams:
        return []
    cur = driver_connection(conn.connection).cursor()
    try:
        cur.execute(
            _STREAMS_UP_TO, {"streams": sorted(streams), "txid": str(upto.txid), "pos": upto.position}
        )
        rows = cur.fetchall()
    finally:
        cur.close()
    return [LogEvent(r) for r in rows]


_ORIGIN = LogCursor()

# A reader of the window (a drain) holds the others back only while it is active: it read, or
# asked to go on, within this many seconds. A paused, faulted or finished drain leaves the window
# at once; a wedged or abandoned one (stuck in a batch: no read, no ask) stops counting after this,
# so it holds the others back once, for at most this long. Several times a big batch's fold.
READER_IDLE_SECONDS = 2.0


class _Reader:
    """What the window knows of one reader: the cursor after its latest read, and when it was
    last seen (a read, or a call to `pace`)."""

    __slots__ = ("cursor", "seen")

    def __init__(self, cursor: LogCursor, seen: float) -> None:
        self.cursor = cursor
        self.seen = seen


def _still_there(conn: Connection, first: LogEvent, last: LogEvent) -> bool:
    """Whether both events are still in the log (same position, same transaction)."""
    found = conn.exec_driver_sql(
        "SELECT count(*) FROM events WHERE (position = %(p1)s AND txid = CAST(%(t1)s AS xid8))"
        " OR (position = %(p2)s AND txid = CAST(%(t2)s AS xid8))",
        {"p1": first.position, "t1": str(first.txid), "p2": last.position, "t2": str(last.txid)},
    ).scalar_one()
    return found == (1 if first is last else 2)


class SharedLog:
    """A window of recently read events shared by the projections of one process.

    The projections of a process read the same stretch of the log, each at its own cursor: when
    catching up they move through it almost side by side. Reading and decoding every event once
    per projection was most of a catch-up's Python time, so reads go through this window: a read
    whose cursor falls inside it takes the events from there (and reads only what lies beyond
    its end from the database, in the caller's transaction).

    Why serving from memory is exact: the window only ever holds events read below the gap-free
    horizon, in log order and without holes. That part of the log is immutable, and anything
    committed later sorts after it (see `cqrs_core.eventlog.store`), so "the events after cursor c"
    that the window holds are exactly what the database returns, and the continuation read
    from the window's last cursor completes them without a gap. Every payload is decoded
    (projections must treat events as read-only, but for the `decoded` memo: they are shared).
    The first projection to fold an event of the window leaves its typed form in `decoded`
    for the others.

    The window holds `capacity` events; a read past its end trims its front. So that a reader
    far ahead does not trim what the slower ones are about to read, each reader (a drain) names
    itself in `read` and asks `pace` before each batch's transaction: readers stay within about
    a window of the slowest active one, and each event is read from the database about once."""

    def __init__(self, capacity: int = 30_000) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)  # a reader read, left, or was woken
        self._fetching = threading.Lock()
        self._events: list[LogEvent] = []
        self._index: dict[int, int] = {}  # position of each held event -> its index (+ offset)
        self._start: LogCursor | None = None  # the cursor just before the first held event
        self._offset = 0  # index shift after trimming the front (indexes stay valid)
        self._readers: dict[object, _Reader] = {}
        self.hits = 0  # events served from the window
        self.misses = 0  # events read from the database
        self.paced_seconds = 0.0  # time readers spent waiting in `pace`

    def read(self, conn: Connection, after: LogCursor, limit: int, reader: object = None) -> list[LogEvent]:
        """The next `limit` events after `after` (see the class). `reader` (a drain's own object)
        is remembered with the cursor it read up to, for `pace`."""
        out = self._read(conn, after, limit)
        if reader is not None:
            with self._moved:
                self._readers[reader] = _Reader(out[-1].cursor if out else after, time.monotonic())
                self._moved.notify_all()
        return out

    def pace(self, reader: object, limit: int, stop: Callable[[], bool] | None = None) -> float:
        """Wait until `reader`'s next read of `limit` events would not push out of the window
        events that another active reader has yet to read; returns the seconds waited.

        Without it a projection with little to fold ran ahead, and every batch it fetched past the
        window's end trimmed the front past the slower projections' cursors: they read and decoded
        that stretch again (the log was read 1.5-2 times over in a catch-up). Paced, the readers
        stay within about a window of the slowest, and each event is read once. The slowest active
        reader never waits (its reads trim nothing another active reader needs), so some reader
        always moves; and the wait is bounded: a reader stops holding the others back once it has
        been idle for READER_IDLE_SECONDS (a wedged or abandoned drain), and no call waits longer
        than that. Call it outside a transaction: a reader waits here, not holding locks or a
        snapshot. `stop` (checked whenever the window wakes the waiter, see `wake`) ends the wait.
        Pacing changes when a read happens, never what it returns."""
        began = time.monotonic()
        deadline = began + READER_IDLE_SECONDS
        with self._moved:
            me = self._readers.get(reader)
            if me is None:
                return 0.0  # a first read: nothing to pace against yet
            while True:
                now = time.monotonic()
                me.seen = now
                until = self._held_back(me, limit, now)
                if until is None or (stop is not None and stop()):
                    break
                timeout = min(deadline, until) - now
                if timeout <= 0:
                    break
                self._moved.wait(timeout)
            waited = time.monotonic() - began
            self.paced_seconds += waited
        return waited

    def leave(self, reader: object) -> None:
        """`reader` reads no more for now (its drain ended): it holds nobody back."""
        with self._moved:
            if self._readers.pop(reader, None) is not None:
                self._moved.notify_all()

    def wake(self) -> None:
        """Make every reader waiting in `pace` check its `stop` now (a runner stopping)."""
        with self._moved:
            self._moved.notify_all()

    def _read(self, conn: Connection, after: LogCursor, limit: int) -> list[LogEvent]:
        out: list[LogEvent] = []
        cursor = after
        checked = False
        while len(out) < limit:
            with self._lock:
                held = self._slice(cursor, limit - len(out))
            if held:
                if not checked and cursor == _ORIGIN:
                    checked = True
                    # The log may have been emptied (`demo reset` truncates it and puts every
                    # checkpoint back at the origin; positions start again at 1). Only a read
                    # from the origin can meet that: txids never repeat, so no cursor taken
                    # after a reset matches an event held from before it. The check runs in the
                    # caller's transaction, whose read of `events` keeps a TRUNCATE out until it
                    # commits.
                    if not _still_there(conn, held[0], held[-1]):
                        self.clear()
                        continue
                with self._lock:
                    self.hits += len(held)
                out += held
                cursor = held[-1].cursor
                continue
            # Past the window: one reader at a time fetches, the others then find it held.
            with self._fetching:
                with self._lock:
                    if self._slice(cursor, 1):
                        continue
                fresh = read_events(conn, cursor, limit - len(out))
                with self._lock:
                    self._remember(cursor, fresh)
                    self.misses += len(fresh)
            out += fresh
            break
        return out

    def clear(self) -> None:
        with self._lock:
            self._events, self._index, self._start, self._offset = [], {}, None, 0

    def _slice(self, after: LogCursor, limit: int) -> list[LogEvent]:
        if self._start is None:
            return []
        if after == self._start:
            first = 0
        else:
            # Indexed by position (unique in the log); the txid must match too.
            at = self._index.get(after.position)
            if at is None:
                return []
            first = at - self._offset
            if self._events[first].txid != after.txid:
                return []
            first += 1
        return self._events[first : first + limit]

    def _next_index(self, cursor: LogCursor) -> int | None:
        """Where in the window the events after `cursor` begin: len(window) at or past its end,
        None before it (or no window)."""
        if self._start is None:
            return None
        if cursor == self._start:
            return 0
        at = self._index.get(cursor.position)
        if at is not None and self._events[at - self._offset].txid == cursor.txid:
            return at - self._offset + 1
        return len(self._events) if cursor > self._events[-1].cursor else None

    def _trimmed_by(self, cursor: LogCursor, limit: int) -> int:
        """How many events at the window's front a read of `limit` events after `cursor` would
        push out (see `_remember`)."""
        at = self._next_index(cursor)
        if at is None:
            return 0  # no window yet, or a read behind it: kept out of the window
        held = len(self._events)
        if at == held and cursor != self._events[-1].cursor:
            return held  # ahead of the window, not next to it: the read replaces the window
        beyond = limit - (held - at)
        return max(0, held + beyond - self.capacity) if beyond > 0 else 0

    def _held_back(self, me: _Reader, limit: int, now: float) -> float | None:
        """None when `me` may read `limit` events now; else the time by which every active reader
        its read would overtake (whose next events it would trim) has gone idle.

        Only readers behind `me` count. A batch bigger than the window (CQRS_CHECKPOINT_INTERVAL
        is not bounded by it) trims what readers level with it or ahead of it read next, too;
        waiting for them cannot help (they would wait for `me` the same way): every drain
        waited READER_IDLE_SECONDS per batch, and the slowest waited too."""
        trimmed = self._trimmed_by(me.cursor, limit)
        mine = self._next_index(me.cursor)
        if trimmed == 0 or mine is None:
            return None
        until: float | None = None
        for other in self._readers.values():
            if other is me or now - other.seen > READER_IDLE_SECONDS:
                continue
            at = self._next_index(other.cursor)
            if at is not None and at < min(trimmed, mine):
                idle_at = other.seen + READER_IDLE_SECONDS
                until = idle_at if until is None else max(until, idle_at)
        return until

    def _remember(self, after: LogCursor, fresh: list[LogEvent]) -> None:
        if not fresh:
            return
        end = self._events[-1].cursor if self._events else self._start
        if end is None or after > end:
            # Empty, or a stretch ahead of the window: it becomes the window.
            self._events, self._index, self._start, self._offset = [], {}, after, 0
        elif after != end:
            return  # behind the window or inside it: keep what the others still need
        base = self._offset + len(self._events)
        index = self._index
        for i, event in enumerate(fresh, base):
            index[event.position] = i
        self._events.extend(fresh)
        excess = len(self._events) - self.capacity
        if excess > 0:
            for event in self._events[:excess]:
                del index[event.position]
            self._start = self._events[excess - 1].cursor
            self._events = self._events[excess:]
            self._offset += excess
