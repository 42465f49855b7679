"""Applying the log to a projection in batches: one transaction per batch, together with the
cursor it moves (exactly-once), with retries, poison-event isolation and parking.

A `Target` says where a projection writes and where its cursor lives: the live tables and
`projection_checkpoints` (LiveTarget), a rebuild's shadow tables and the rebuild cursor in
`projection_control` (rebuild.py), or verify's scratch tables (verify.py). `step` is the same for
all of them, so a rebuild and a verify replay exactly what the live runner does.

Every batch transaction first locks the row holding the cursor (`SELECT ... FOR UPDATE`) and
reads the events *after* taking it. Whatever else writes the same projection (a second runner
that somehow got in, a parked-event retry, a rebuild's swap) waits for that row and then sees
the new cursor, so no event is applied twice even without the advisory locks.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg2
import sqlalchemy.exc as sa_exc
from sqlalchemy import Connection, Engine, text

from cqrs_core.eventlog.cursors import LogCursor, lock_checkpoint, locked_cursor, set_checkpoint
from cqrs_core.eventlog.reader import LoggedEvent, SharedLog, read_events
from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.errors import InfrastructureError, TimeoutError_
from cqrs_core.projections.base import Projection

log = logging.getLogger(__name__)


class _CatchUpGC:
    """Fewer garbage collections while projections catch up.

    A catch-up allocates millions of short-lived objects (events, payloads, rows); with the
    default threshold (a young collection every 700 allocations, and full collections rescanning
    everything the process holds) the collector took about a quarter of a catch-up's time
    (`bench`: 26-28k events/s as is, 34-36k with the collector off, 38k with this threshold).
    While any drain of the process is catching up, the young generation is collected every
    50,000 allocations instead, and what the process held before is frozen (`gc.freeze`: full
    collections skip it); both are undone when the last one is done.
    Reference counting still frees almost everything at once; only cycles wait a little longer."""

    THRESHOLDS = (50_000, 20, 100)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: tuple[int, int, int] | None = None

    def enter(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(*self.THRESHOLDS)
                gc.freeze()
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._saved is not None:
                gc.unfreeze()
                gc.set_threshold(*self._saved)
                self._saved = None


catch_up_gc = _CatchUpGC()


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # retries after the first try
    backoff: float = 0.05  # first delay in seconds, doubled each time

    def delays(self) -> list[float]:
        return [self.backoff * (2**i) for i in range(self.attempts)]


@dataclass
class StepResult:
    processed: int = 0  # events the cursor moved past
    applied: int = 0  # of which applied (the rest were skipped as parked)
    parked: int = 0
    halted: bool = False  # the target refused to go on (paused, faulted, cancelled)
    full: bool = False  # the batch was full: more events are probably waiting

    def add(self, other: StepResult) -> None:
        self.processed += other.processed
        self.applied += other.applied
        self.parked += other.parked
        self.halted = self.halted or other.halted
        self.full = other.full


class Target(ABC):
    """Where a projection writes and where its cursor lives."""

    name: str
    tables: Mapping[str, str]

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Connection]: ...

    @abstractmethod
    def start(self, conn: Connection) -> LogCursor | None:
        """Lock the cursor row and return the cursor, or None to apply nothing now."""

    def read(
        self, conn: Connection, cursor: LogCursor, limit: int, handled: Collection[str] | None
    ) -> Sequence[LoggedEvent]:
        """The next events after `cursor` in gap-free order (see `reader.read_events`)."""
        return read_events(conn, cursor, limit, handled)

    def upper_bound(self) -> LogCursor | None:
        """Never apply events after this cursor (verify replays up to the live checkpoint)."""
        return None

    def skip_positions(self, conn: Connection, events: Sequence[LoggedEvent]) -> set[int]:
        """Events of the batch not to apply (replays skip what the live projection skipped)."""
        return set()

    @abstractmethod
    def advance(
        self, conn: Connection, cursor: LogCursor, applied: Sequence[LoggedEvent], processed: int
    ) -> None:
        """Move the cursor in the batch's transaction."""

    @abstractmethod
    def park(self, conn: Connection, event: LoggedEvent, error: str, attempts: int) -> bool:
        """Record an event that keeps failing; True = skip it and go on, False = stop here."""


def is_transient(exc: BaseException) -> bool:
    """Errors of the connection or the server (not of an event): retry later, never park."""
    if isinstance(exc, InfrastructureError | TimeoutError_):
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, psycopg2.OperationalError | psycopg2.InterfaceError)


def describe_error(exc: BaseException) -> str:
    """One line for operators: the error type and the first line of its message (no SQL)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}"[:1000]


def step(
    projection: Projection,
    target: Target,
    store: EventStore,
    limit: int,
    retry: RetryPolicy,
    sleep: Callable[[float], Any] = time.sleep,
) -> StepResult:
    """Apply the next batch of up to `limit` events. A failing batch is retried with exponential
    backoff; if it keeps failing, the poison event is isolated by halving: the first half of the
    batch is applied (and committed) on its own, a half that fails is halved again, down to the
    single event that fails, which gets the same retries and is then parked and, by policy,
    skipped or left in front of the cursor. Every good event before it is applied, in a few
    transactions rather than one per event, so a big batch costs O(log n) extra attempts.
    Transient (connection/server) errors propagate after the retries: nothing is parked because
    the database was away."""
    try:
        return _with_retries(lambda: _apply_next(projection, target, store, limit), retry, sleep)
    except Exception as exc:
        if is_transient(exc):
            raise
        if limit == 1:
            return _park_next(target, store, exc, retry.attempts + 1)
        log.warning(
            "%s: a batch of %d events failed (%s); narrowing it down to the failing event",
            target.name,
            limit,
            describe_error(exc),
        )
    return _isolate(projection, target, store, limit, retry, sleep)


def _isolate(
    projection: Projection,
    target: Target,
    store: EventStore,
    limit: int,
    retry: RetryPolicy,
    sleep: Callable[[float], Any],
) -> StepResult:
    """Bisect the failed batch of `limit` events (see `step`). Halves bigger than one event are
    tried once (a failure only makes the next try smaller); a single event gets the full retries
    before it is parked."""
    total = StepResult()
    remaining = limit
    size = max(1, limit // 2)
    while remaining > 0:
        n = min(size, remaining)
        try:
            if n == 1:
                one = _with_retries(lambda: _apply_next(projection, target, store, 1), retry, sleep)
            else:
                one = _apply_next(projection, target, store, n)
        except Exception as exc:
            if is_transient(exc):
                raise
            if n > 1:
                size = max(1, n // 2)
                continue
            total.add(_park_next(target, store, exc, retry.attempts + 1))
            return total
        total.add(one)
        remaining -= one.processed
        if one.halted or one.processed < n:
            break
    total.full = total.processed > 0 and not total.halted  # the rest may still be waiting
    return total


def _with_retries(
    fn: Callable[[], StepResult], retry: RetryPolicy, sleep: Callable[[float], Any]
) -> StepResult:
    delays = retry.delays()
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == len(delays):
                raise
            log.debug("attempt %d failed (%s); retrying", attempt + 1, describe_error(exc))
            sleep(delays[attempt])
    raise AssertionError("unreachable")


def _bounded(target: Target, events: Sequence[LoggedEvent]) -> tuple[Sequence[LoggedEvent], bool]:
    bound = target.upper_bound()
    if bound is None:
        return events, False
    kept = [e for e in events if e.cursor <= bound]
    return kept, len(kept) < len(events)


def _apply_next(projection: Projection, target: Target, store: EventStore, limit: int) -> StepResult:
    with target.transaction() as conn:
        cursor = target.start(conn)
        if cursor is None:
            return StepResult(halted=True)
        events, truncated = _bounded(target, list(target.read(conn, cursor, limit, projection.handled_types)))
        if not events:
            return StepResult()
        skip = target.skip_positions(conn, events)
        to_apply = [e for e in events if e.position not in skip]
        if to_apply:
            projection.apply(conn, to_apply, target.tables)
        target.advance(conn, events[-1].cursor, to_apply, len(events))
        return StepResult(
            processed=len(events), applied=len(to_apply), full=len(events) == limit and not truncated
        )


def _park_next(target: Target, store: EventStore, exc: BaseException, attempts: int) -> StepResult:
    error = describe_error(exc)
    with target.transaction() as conn:
        cursor = target.start(conn)
        if cursor is None:
            return StepResult(halted=True)
        events, _ = _bounded(target, read_events(conn, cursor, 1))
        if not events:
            return StepResult()
        event = events[0]
        log.error(
            "%s: parking event %s at position %d: %s", target.name, event.event_type, event.position, error
        )
        if target.park(conn, event, error, attempts):
            target.advance(conn, event.cursor, [], 1)
            return StepResult(processed=1, parked=1, full=True)
        return StepResult(parked=1, halted=True)


# ---------------------------------------------------------------- the live read model

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


class LiveTarget(Target):
    """The live tables and `projection_checkpoints`."""

    def __init__(self, engine: Engine, projection: Projection, shared_log: SharedLog | None = None) -> None:
        self.engine = engine
        self.name = projection.name
        self.tables = {t.name: t.name for t in projection.tables}
        self.shared_log = shared_log
        self._from: LogCursor | None = None
        self._conn: Connection | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        # One pooled connection for all the batches of a drain (see `close`): no checkout and
        # pre-ping round trip per batch. A failed batch gives it back; the next takes a fresh one.
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            with self._conn.begin():
                yield self._conn
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Return the connection to the pool (the end of a drain)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def start(self, conn: Connection) -> LogCursor | None:
        row = lock_checkpoint(conn, self.name)
        if row.desired_state == "paused" or row.state == "faulted":
            return None
        self._from = locked_cursor(row)
        return self._from

    def read(
        self, conn: Connection, cursor: LogCursor, limit: int, handled: Collection[str] | None
    ) -> Sequence[LoggedEvent]:
        if self.shared_log is None:
            return read_events(conn, cursor, limit, handled)
        return self.shared_log.read(conn, cursor, limit)

    def advance(
        self, conn: Connection, cursor: LogCursor, applied: Sequence[LoggedEvent], processed: int
    ) -> None:
        # The live target skips nothing: every event between the locked checkpoint and `cursor`
        # was applied, so parked ones among them (a faulted projection resumed) are resolved.
        # Naming them by cursor range keeps a 5,000-position array out of every batch.
        if self._from is not None and len(applied) == processed:
            set_checkpoint(conn, self.name, cursor, len(applied), resolved_after=self._from)
        else:
            set_checkpoint(conn, self.name, cursor, len(applied), [e.position for e in applied])

    def park(self, conn: Connection, event: LoggedEvent, error: str, attempts: int) -> bool:
        policy = conn.execute(
            text("SELECT failure_policy FROM projection_control WHERE name = :n"), {"n": self.name}
        ).scalar_one()
        park_event(conn, self.name, event, error, attempts)
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
                "n": self.name,
                "error": f"position {event.position} ({event.event_type}): {error}",
                "fault": policy == "fault",
            },
        )
        return policy == "skip"
