"""The query bus: routes a query to its handler (read/handlers), which runs inside a read-only,
snapshot-consistent transaction with a server-side timeout (read/sql.py); caches results;
honours read-your-writes; reads from the read replica when there is one (read/replica.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import Engine

from cqrs_core.eventlog import cursors as log_cursors
from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import (
    CQRSError,
    InfrastructureError,
    RateLimitedError,
    StaleReadError,
    ValidationError,
)
from cqrs_core.infra.metrics import MetricsRecorder, record_cache_lookup
from cqrs_core.infra.rate_limit import RateLimiter
from cqrs_core.read import queries as q
from cqrs_core.read.handlers import ROUTES
from cqrs_core.read.query_cache import CacheEntry, QueryCache
from cqrs_core.read.replica import ReadReplica, lost_connection
from cqrs_core.read.sql import DroppedConnection, Handler, run_handler

log = logging.getLogger(__name__)

T = TypeVar("T")


class QueryRateLimitedError(RateLimitedError):
    """One actor asked for more answers than the query rate limit allows."""

    def __init__(self, retry_after: float, **context: Any) -> None:
        self.retry_after = retry_after
        CQRSError.__init__(self, f"Too many requests for data; try again in {retry_after:.1f} s.", **context)


class QueryBus:
    def __init__(
        self,
        engine: Engine,
        metrics: MetricsRecorder,
        *,
        timeout: float,
        caching: bool,
        cache_size: int,
        default_ttl: float,
        extra_routes: dict[type[q.Query], Callable[[Any], Any]] | None = None,
        limiter: RateLimiter | None = None,
        routes: Mapping[type[q.Query], Handler] | None = None,
        replica: ReadReplica | None = None,
    ) -> None:
        # The database the read models are read from; with a `replica`, the primary, which
        # queries read only when the replica's fallback says so (and to find an event the
        # replica has not received yet).
        self.engine = engine
        self.replica = replica
        # SQL handlers: read/handlers' routes, with those the service binds to what the read side
        # cannot import itself (the correlation trace takes the projections' handled event types).
        self.routes: dict[type[q.Query], Handler] = {**ROUTES, **(routes or {})}
        self.metrics = metrics
        self.timeout = timeout
        self.caching = caching
        self.default_ttl = default_ttl
        self.cache = QueryCache(cache_size)
        # Queries answered outside the read models (projection status, metrics): no SQL snapshot.
        self.extra_routes = dict(extra_routes or {})
        self.limiter = limiter

    def execute(
        self, query: q.Query, *, min_position: int | None = None, cache: bool = True, actor: str | None = None
    ) -> Any:
        """Answer `query`. An `actor` (who asks: the pages pass the signed-in user) is charged one
        token of the query rate limit for every answer that is not served from the cache; None
        is this process's own code (the command line, benchmarks, scripts) and is not limited."""
        started = time.perf_counter()
        name = type(query).__name__
        try:
            if not isinstance(query, q.Query):
                raise ValidationError("That is not a query; build one with QueryFactory.")
            if min_position is not None and (not isinstance(min_position, int) or min_position < 0):
                raise ValidationError("min position must be a whole number ≥ 0.")
            value = self._execute(query, min_position or 0, cache, started, actor)
        except CQRSError as exc:
            self.metrics.record(name, (time.perf_counter() - started) * 1000, exc.category)
            raise
        except Exception as exc:
            self.metrics.record(name, (time.perf_counter() - started) * 1000, "infrastructure")
            log.exception("query %s failed unexpectedly", name)
            raise CQRSError(query=name) from exc
        self.metrics.record(name, (time.perf_counter() - started) * 1000)
        return value

    def _execute(
        self, query: q.Query, min_position: int, use_cache: bool, started: float, actor: str | None
    ) -> Any:
        extra = self.extra_routes.get(type(query))
        if extra is None and type(query) not in self.routes:
            raise ValidationError(f"No handler for {type(query).__name__}.")
        deadline = started + self.timeout
        target = self._target(min_position) if (min_position and query.projections) else None
        ttl = query.ttl_seconds if query.ttl_seconds is not None else self.default_ttl

        def compute() -> CacheEntry:
            self._charge(actor)
            if extra is not None:
                # Answered from the primary (projection status, metrics): wait there.
                if target is not None:
                    self._wait_until_applied(target, query.projections, deadline, self.engine)
                return CacheEntry(extra(query), ttl)
            return self._read(query, ttl, deadline, target)

        if not (use_cache and self.caching and query.cacheable):
            return compute().value
        entry, hit = self.cache.get_or_compute(
            query.cache_key(), compute, accept=lambda e: e.covers(target, query.projections)
        )
        record_cache_lookup(type(query).__name__, hit)
        if not entry.covers(target, query.projections):  # a concurrent leader computed an older value
            entry = compute()
        return entry.value

    def _charge(self, actor: str | None) -> None:
        # Only work that reaches the database costs a token: cache hits cost next to nothing, so
        # pages that many people watch refresh from the cache without using anyone's budget.
        if actor is None or self.limiter is None:
            return
        wait = self.limiter.try_acquire(actor)
        if wait:
            raise QueryRateLimitedError(wait, actor=actor)

    def _read(self, query: q.Query, ttl: float, deadline: float, target: LogCursor | None) -> CacheEntry:
        handler = self.routes[type(query)]
        # Read-your-writes: read where the change was seen applied (a replica only moves forward).
        engine = self._wait_until_applied(target, query.projections, deadline) if target is not None else None

        def read(engine: Engine) -> CacheEntry:
            for attempt in (1, 2):
                remaining = max(0.05, deadline - time.perf_counter())
                try:
                    with translate_db_errors():
                        value, cursors = run_handler(engine, handler, query, min(self.timeout, remaining))
                    return CacheEntry(value, ttl, cursors)
                except InfrastructureError as exc:
                    # A pooled connection the server dropped (a restart): a read is safe to run
                    # again, once, on a fresh connection. Anything else (timeouts included) is the answer.
                    if attempt == 2 or not isinstance(exc.__cause__, DroppedConnection):
                        raise
            raise AssertionError("unreachable")

        return self._reading(read, engine)

    def _reading(self, work: Callable[[Engine], T], engine: Engine | None = None) -> T:
        """`work(engine)` on `engine`, or on the engine queries read from now. A connection to the
        replica that is lost on the way marks it unreachable, and the work goes where the
        replica's fallback says (the primary, or ReplicaUnavailableError)."""
        if self.replica is None:
            return work(engine or self.engine)
        engine = engine or self.replica.route()
        if engine is not self.replica.engine:
            return work(engine)
        try:
            return work(engine)
        except InfrastructureError as exc:
            if not lost_connection(exc):
                raise
            return work(self.replica.failed(exc))

    def _target(self, position: int) -> LogCursor:
        def cursor_at(engine: Engine) -> LogCursor | None:
            with translate_db_errors(), engine.connect() as conn:
                return log_cursors.cursor_at(conn, position)

        target = self._reading(cursor_at)
        if target is None and self.replica is not None:
            target = cursor_at(self.engine)  # the replica may not have received it yet; the primary has
        if target is None:
            raise ValidationError(f"There is no event at position {position} (yet).")
        return target

    def _wait_until_applied(
        self, target: LogCursor, projections: tuple[str, ...], deadline: float, engine: Engine | None = None
    ) -> Engine:
        """Wait until every projection of `projections` has a checkpoint at or past `target`, as
        `engine` (default: wherever queries read now, asked again at each look) sees them, and
        return the engine that saw it. On a replica the checkpoint rows are the primary's,
        replayed: they pass `target` once the replica has replayed the change's read-model rows."""
        delay = 0.002
        behind: dict[str, LogCursor] = {}
        origin = LogCursor()

        def look(on: Engine) -> tuple[Engine, dict[str, LogCursor]]:
            with translate_db_errors(), on.connect() as conn:
                cursors = log_cursors.read_checkpoints(conn, projections)
            return on, {p: cursors.get(p, origin) for p in projections if cursors.get(p, origin) < target}

        while True:
            seen_on, behind = self._reading(look, engine)
            if not behind:
                return seen_on
            if time.perf_counter() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        with translate_db_errors(), seen_on.connect() as conn:
            head = log_cursors.head(conn)
        worst = min(pos for _txid, pos in behind.values())
        names = ", ".join(sorted(behind))
        # Blame the replica only when the primary's projections have applied the change.
        on_replica = self.replica is not None and seen_on is self.replica.engine and not look(self.engine)[1]
        what = "has not replayed your change yet" if on_replica else "has not caught up with your change yet"
        raise StaleReadError(
            f"The {'read replica' if on_replica else 'read model'} ({names}) {what}: it is at event {worst}, "
            f"your change is at {target[1]} (head {head}); try again in a moment.",
            target=target[1],
            behind=behind,
        )
