"""Applying the log to a projection in batches: one transaction per batch, together with the
cursor it moves (exactly-once), with retries, isolation of a poison event by halving, and the
decision to park it. The SQL is elsewhere: checkpoints in `cqrs_core.eventlog.cursors`, parked
events in `parking.py`; the runner that schedules batches (growing them while they come back full)
is `runner.py`, and the collector tuning while catching up is `gc_tuning.py`.

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
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from cqrs_core.eventlog.cursors import LogCursor, lock_checkpoint, locked_cursor, set_checkpoint
from cqrs_core.eventlog.reader import LoggedEvent, SharedLog, read_events
from cqrs_core.infra.db import driver_connection
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine.failures import describe_error, is_transient
from cqrs_core.projections.engine.parking import park_live

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # retries after the first try (ProjectionManager takes both from the settings)
    backoff: float = 0.05  # first delay in seconds, doubled each time: a blip passes in ~0.35 s

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


def step(
    projection: Projection,
    target: Target,
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
        return _with_retries(lambda: _apply_next(projection, target, limit), retry, sleep)
    except Exception as exc:
        if is_transient(exc):
            raise
        if limit == 1:
            return _park_next(target, exc, retry.attempts + 1)
        log.warning(
            "%s: a batch of %d events failed (%s); narrowing it down to the failing event",
            target.name,
            limit,
            describe_error(exc),
        )
    return _isolate(projection, target, limit, retry, sleep)


def _isolate(
    projection: Projection,
    target: Target,
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
                one = _with_retries(lambda: _apply_next(projection, target, 1), retry, sleep)
            else:
                one = _apply_next(projection, target, n)
        except Exception as exc:
            if is_transient(exc):
                raise
            if n > 1:
                size = max(1, n // 2)
                continue
            total.add(_park_next(target, exc, retry.attempts + 1))
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


def _apply_next(projection: Projection, target: Target, limit: int) -> StepResult:
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


def _park_next(target: Target, exc: BaseException, attempts: int) -> StepResult:
    error = describe_error(exc)
    with target.transaction() as conn:
        cursor = target.start(conn)
        if cursor is None:
            return StepResult(halted=True)
        # The target's own reader: a replay of some streams only parks an event of those streams.
        events, _ = _bounded(target, list(target.read(conn, cursor, 1, None)))
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


# ---------------------------------------------------------------- the shared event window
# The projections of a process read the log through one window of decoded events (`SharedLog`,
# see `cqrs_core.eventlog.reader`). Building it and reading a live batch from it happen here only.

# The window holds at least this many events, so projections a little apart still share it.
SHARED_WINDOW_MIN_EVENTS = 30_000
# ... and at least this many of the largest batches (CQRS_PROJECTION_MAX_BATCH), so a fast
# projection a few full batches ahead of a slow one does not push out what the slow one reads next.
SHARED_WINDOW_BATCHES = 6


def shared_window(max_batch: int) -> SharedLog:
    """A new window for the projections of one process whose batches reach `max_batch` events."""
    return SharedLog(capacity=window_capacity(max_batch))


def window_capacity(max_batch: int, drains_per_projection: int = 1) -> int:
    """The events the window holds: more when the process drains several partitions of each
    projection (they spread further apart in the log, and one that falls behind the window reads
    and decodes its events again)."""
    return max(SHARED_WINDOW_MIN_EVENTS, SHARED_WINDOW_BATCHES * max_batch) * max(1, drains_per_projection)


def read_window(
    conn: Connection,
    window: SharedLog | None,
    cursor: LogCursor,
    limit: int,
    handled: Collection[str] | None,
    reader: object = None,
) -> Sequence[LoggedEvent]:
    """A live batch: the next `limit` events after `cursor`, from the process's shared window (every
    payload decoded, events shared: read-only; `reader` is the drain, for `SharedLog.pace`), or
    without one straight from the log (payloads decoded only for the `handled` types)."""
    if window is None:
        return read_events(conn, cursor, limit, handled)
    return window.read(conn, cursor, limit, reader)


# ---------------------------------------------------------------- the live read model


class LiveTarget(Target):
    """The live tables and `projection_checkpoints`. Once `abandoned` is set (the runner restarted
    this drain, see runner.py) it applies nothing more: every batch halts before it reads."""

    def __init__(
        self,
        engine: Engine,
        projection: Projection,
        shared_log: SharedLog | None = None,
        *,
        abandoned: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.name = projection.name
        self.tables = {t.name: t.name for t in projection.tables}
        self.shared_log = shared_log
        self.abandoned = abandoned
        # The database session of the drain's connection (what a restart ends), None between connections.
        self.backend_pid: int | None = None
        self._from: LogCursor | None = None
        self._conn: Connection | None = None
        # Set when the projection turned out to be split into partitions (partitioning.py):
        # this target then applies nothing and the runner reloads the layout.
        self.layout_changed = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        # One pooled connection for all the batches of a drain (see `close`): no checkout and
        # pre-ping round trip per batch. A failed batch gives it back; the next takes a fresh one.
        if self._conn is None:
            self._conn = self.engine.connect()
            self.backend_pid = driver_connection(self._conn.connection).info.backend_pid
        try:
            with self._conn.begin():
                yield self._conn
        except BaseException:
            self.close()
            raise

    def pace(self, limit: int, stop: Callable[[], bool] | None = None) -> float:
        """Before a batch of `limit` events, outside its transaction: wait (bounded) while reading
        it would push out of the shared window what a slower drain reads next (`SharedLog.pace`).
        Returns the seconds waited."""
        if self.shared_log is None:
            return 0.0
        return self.shared_log.pace(self, limit, stop)

    def close(self) -> None:
        """Return the connection to the pool and leave the shared window (the end of a drain, or a
        failed batch: the next batch takes a fresh connection and joins the window again)."""
        if self.shared_log is not None:
            self.shared_log.leave(self)
        conn, self._conn = self._conn, None
        self.backend_pid = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def start(self, conn: Connection) -> LogCursor | None:
        if self.abandoned is not None and self.abandoned.is_set():
            return None
        row = lock_checkpoint(conn, self.name)
        if row.partitions != 1:
            self.layout_changed = True
            return None
        if row.desired_state == "paused" or row.state == "faulted":
            return None
        self._from = locked_cursor(row)
        return self._from

    def read(
        self, conn: Connection, cursor: LogCursor, limit: int, handled: Collection[str] | None
    ) -> Sequence[LoggedEvent]:
        return read_window(conn, self.shared_log, cursor, limit, handled, self)

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
        return park_live(conn, self.name, event, error, attempts)
