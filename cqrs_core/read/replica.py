"""The read replica: how far behind the primary it is, and where the query side reads because of it.

With `CQRS_READ_DATABASE_URL` set, queries read from that server, normally a PostgreSQL streaming
replica (a hot standby). A standby is read-only and replays the primary's WAL a little later,
so three things can go wrong, and `ReadReplica` decides what each means for a query:

* it is behind: `ReplicaState` measures it on the standby itself, in bytes (WAL received but
  not yet replayed) and in seconds (since the newest replayed transaction committed on the
  primary; 0 once everything received is replayed, so an idle primary does not read as lag);
* it is more than `CQRS_READ_REPLICA_MAX_LAG_SECONDS` behind, or cannot be reached:
  `CQRS_READ_REPLICA_FALLBACK` says whether queries read from the primary meanwhile (`primary`)
  or are refused with `ReplicaUnavailableError`, one sentence (`error`);
* read-your-writes: the query bus waits until the replica's own checkpoint rows (replicated
  from the primary with the rows they describe) include the change, as it waits on a primary.

The state is measured at most once per `REPLICA_CHECK_SECONDS` (one round trip to the replica),
not once per query; a connection to the replica that fails in a query marks it unreachable at
once. A standby that has lost its primary knows nothing newer, so it reads as caught up with
what it received: the primary's own health says that it is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import psycopg2
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from cqrs_core.infra.errors import InfrastructureError, ReplicaUnavailableError

log = logging.getLogger(__name__)

Fallback = Literal["primary", "error"]

# How old the measured state may be before a query measures it again (one round trip).
REPLICA_CHECK_SECONDS = 1.0
# A standby that has just received WAL after a quiet spell on the primary reads, until it has
# replayed it (milliseconds), as behind by the whole quiet spell: the seconds count from the last
# transaction it replayed. A measurement beyond the allowed lag is taken again after this pause,
# and only a second one beyond it counts.
REMEASURE_SECONDS = 0.05

# Functions every role may call on a standby. On a server that is not in recovery, receive and
# replay positions are NULL and the pause state cannot be asked (it raises), hence the CASEs.
_STATE_SQL = text(
    """
    SELECT pg_is_in_recovery() AS standby,
           CASE WHEN pg_is_in_recovery()
                THEN greatest(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::bigint
           END AS lag_bytes,
           CASE WHEN NOT pg_is_in_recovery() THEN 0
                WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
                ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
           END AS lag_seconds,
           CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END AS replay_paused
    """
)


@dataclass(frozen=True)
class ReplicaState:
    """The read replica as measured at `checked_at`. `standby` is False when the read URL names a
    server that is not in recovery (a primary: no replication lag to speak of). `lag_bytes` and
    `lag_seconds` are None when the standby cannot tell (it has not streamed since it started)."""

    reachable: bool
    standby: bool = False
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    replay_paused: bool = False
    problem: str = ""  # why it could not be measured: an error class, never a URL
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def within(self, max_lag_seconds: float) -> bool:
        """Whether queries may read here: reachable and at most `max_lag_seconds` behind."""
        return self.reachable and (self.lag_seconds is None or self.lag_seconds <= max_lag_seconds)


def measure(engine: Engine) -> ReplicaState:
    """One round trip to the replica: whether it is a standby, how far behind, whether paused."""
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                row = conn.execute(_STATE_SQL).one()
            return ReplicaState(
                reachable=True,
                standby=bool(row.standby),
                lag_bytes=None if row.lag_bytes is None else int(row.lag_bytes),
                lag_seconds=None if row.lag_seconds is None else max(0.0, float(row.lag_seconds)),
                replay_paused=bool(row.replay_paused),
            )
        except DBAPIError as exc:
            # A pooled connection the replica dropped (it restarted) is no verdict: SQLAlchemy has
            # invalidated the pool, so one more try connects afresh.
            if attempt == 1 and exc.connection_invalidated:
                continue
            log.debug("the read replica could not be measured", exc_info=True)
            return ReplicaState(reachable=False, problem=type(getattr(exc, "orig", exc)).__name__)
    raise AssertionError("unreachable")


def lost_connection(exc: BaseException) -> bool:
    """Whether a translated database error means the server went away (refused the connection,
    dropped it, or is shutting down), rather than something about the query."""
    cause = exc.__cause__
    orig = getattr(cause, "orig", cause)
    if not isinstance(orig, psycopg2.OperationalError | psycopg2.InterfaceError):
        return False
    code = getattr(orig, "pgcode", None)
    return code is None or code.startswith("57P")  # 57P01..04: shutdown, crash, starting up


class ReadReplica:
    """Where queries read: `engine` (the replica) while it is reachable and close enough to the
    primary, otherwise what `fallback` says. Thread-safe; one per query bus."""

    def __init__(
        self,
        engine: Engine,
        primary: Engine,
        *,
        fallback: Fallback,
        max_lag_seconds: float,
        check_seconds: float = REPLICA_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine, self.primary = engine, primary
        self.fallback, self.max_lag_seconds = fallback, max_lag_seconds
        self.check_seconds = check_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state: tuple[float, ReplicaState] | None = None
        self._usable: bool | None = None  # the last verdict, to log each change once

    def state(self, max_age: float | None = None) -> ReplicaState:
        """The replica's state, measured again when older than `max_age` (default `check_seconds`);
        concurrent callers share one measurement."""
        max_age = self.check_seconds if max_age is None else max_age
        with self._lock:
            now = self._clock()
            if self._state is None or now - self._state[0] > max_age:
                state = measure(self.engine)
                if state.reachable and not state.within(self.max_lag_seconds):
                    time.sleep(REMEASURE_SECONDS)
                    state = measure(self.engine)
                self._remember(now, state)
            assert self._state is not None
            return self._state[1]

    def route(self) -> Engine:
        """The engine a query reads from now; ReplicaUnavailableError when the replica may not be
        read and the fallback is `error`."""
        state = self.state()
        if state.within(self.max_lag_seconds):
            return self.engine
        return self._fallback(state)

    def failed(self, exc: InfrastructureError) -> Engine:
        """A query lost its connection to the replica: it counts as unreachable from now on (until
        the next measurement), and the query goes where the fallback says."""
        state = ReplicaState(reachable=False, problem=str(exc.context.get("detail", "connection lost")))
        with self._lock:
            self._remember(self._clock(), state)
        return self._fallback(state, exc)

    @property
    def reading_from(self) -> Literal["replica", "primary", "nowhere"]:
        """Where queries read according to the last measurement (for the System page)."""
        if self.state().within(self.max_lag_seconds):
            return "replica"
        return "primary" if self.fallback == "primary" else "nowhere"

    def describe(self, state: ReplicaState) -> str:
        """One line for operators: how far behind, and what that means for queries."""
        if not state.reachable:
            where = "queries read from the primary" if self.fallback == "primary" else "queries are refused"
            return f"unreachable ({state.problem or 'no connection'}); {where} until it is back"
        if not state.standby:
            return "not a standby (not in recovery): queries read from it with no replication lag"
        behind = f"{_size(state.lag_bytes)} and {_seconds(state.lag_seconds)} behind"
        paused = "replay paused, " if state.replay_paused else ""
        if state.within(self.max_lag_seconds):
            return f"streaming, {paused}{behind}"
        where = "queries read from the primary" if self.fallback == "primary" else "queries are refused"
        return f"{paused}{behind}, more than the {self.max_lag_seconds:g} s allowed; {where}"

    # ------------------------------------------------------------ helpers

    def _remember(self, now: float, state: ReplicaState) -> None:
        self._state = (now, state)
        usable = state.within(self.max_lag_seconds)
        if usable != self._usable:
            if not usable:
                log.warning("the read replica is not read from: %s", self.describe(state))
            elif self._usable is not None:
                log.info("the read replica is read from again: %s", self.describe(state))
            self._usable = usable

    def _fallback(self, state: ReplicaState, cause: BaseException | None = None) -> Engine:
        if self.fallback == "primary":
            return self.primary
        if not state.reachable:
            message = "The read replica cannot be reached, so nothing could be read; try again in a moment."
        else:
            message = (
                f"The read replica is {_seconds(state.lag_seconds)} behind the primary (more than the "
                f"{self.max_lag_seconds:g} s allowed), so nothing was read; try again in a moment."
            )
        raise ReplicaUnavailableError(message, problem=state.problem) from cause


def _seconds(value: float | None) -> str:
    return "an unknown time" if value is None else f"{value:.1f} s"


def _size(value: int | None) -> str:
    if value is None:
        return "an unknown amount of WAL"
    if value < 1024:
        return f"{value:,} bytes"
    amount = value / 1024
    for unit in ("kB", "MB"):
        if amount < 1024:
            return f"{amount:,.1f} {unit}"
        amount /= 1024
    return f"{amount:,.1f} GB"
