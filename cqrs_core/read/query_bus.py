"""The query bus: routes a query to its handler (read/handlers), which runs inside a read-only,
snapshot-consistent transaction with a server-side timeout (read/sql.py); caches results;
honours read-your-writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

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
from cqrs_core.infra.rate_limit import TokenBucketLimiter
from cqrs_core.read import queries as q
from cqrs_core.read.handlers import ROUTES
from cqrs_core.read.query_cache import CacheEntry, QueryCache
from cqrs_core.read.sql import DroppedConnection, Handler, run_handler

log = logging.getLogger(__name__)


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
        limiter: TokenBucketLimiter | None = None,
        routes: Mapping[type[q.Query], Handler] | None = None,
    ) -> None:
        self.engine = engine
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
            if target is not None:
                self._wait_until_applied(target, query.projections, deadline)
            if extra is not None:
                return CacheEntry(extra(query), ttl)
            return self._read(query, ttl, deadline)

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

    def _read(self, query: q.Query, ttl: float, deadline: float) -> CacheEntry:
        handler = self.routes[type(query)]
        for attempt in (1, 2):
            remaining = max(0.05, deadline - time.perf_counter())
            try:
                with translate_db_errors():
                    value, cursors = run_handler(self.engine, handler, query, min(self.timeout, remaining))
                return CacheEntry(value, ttl, cursors)
            except InfrastructureError as exc:
                # A pooled connection the server dropped (a restart): a read is safe to run again,
                # once, on a fresh connection. Anything else (timeouts included) is the answer.
                if attempt == 2 or not isinstance(exc.__cause__, DroppedConnection):
                    raise
        raise AssertionError("unreachable")

    def _target(self, position: int) -> LogCursor:
        with translate_db_errors(), self.engine.connect() as conn:
            target = log_cursors.cursor_at(conn, position)
        if target is None:
            raise ValidationError(f"There is no event at position {position} (yet).")
        return target

    def _wait_until_applied(self, target: LogCursor, projections: tuple[str, ...], deadline: float) -> None:
        delay = 0.002
        behind: dict[str, LogCursor] = {}
        while True:
            with translate_db_errors(), self.engine.connect() as conn:
                cursors = log_cursors.read_checkpoints(conn, projections)
                origin = LogCursor()
                behind = {p: cursors.get(p, origin) for p in projections if cursors.get(p, origin) < target}
                if not behind:
                    return
                if time.perf_counter() + delay > deadline:
                    head = log_cursors.head(conn)
                    break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        worst = min(pos for _txid, pos in behind.values())
        names = ", ".join(sorted(behind))
        raise StaleReadError(
            f"The read model ({names}) has not caught up with your change yet: it is at event {worst}, "
            f"your change is at {target[1]} (head {head}); try again in a moment.",
            target=target[1],
            behind=behind,
        )
