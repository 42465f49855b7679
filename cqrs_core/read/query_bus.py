"""The query bus: routes a query to its handler inside a read-only, snapshot-consistent
transaction with a server-side timeout; caches results; honours read-your-writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine, text

from cqrs_core.infra.db import driver_connection, translate_db_errors
from cqrs_core.infra.errors import (
    CQRSError,
    InfrastructureError,
    RateLimitedError,
    StaleReadError,
    ValidationError,
)
from cqrs_core.infra.metrics import MetricsRecorder
from cqrs_core.infra.rate_limit import TokenBucketLimiter
from cqrs_core.read import queries as q
from cqrs_core.read import query_handlers as h
from cqrs_core.read.query_cache import CacheEntry, QueryCache
from cqrs_core.read.query_handlers import SqlReader

log = logging.getLogger(__name__)

Handler = Callable[[SqlReader, Any], Any]

ROUTES: dict[type[q.Query], Handler] = {
    q.GetWorkflowList: h.workflow_list,
    q.SearchWorkflows: h.search_workflows,
    q.GetWorkflow: h.workflow_detail,
    q.GetStatistics: h.statistics,
    q.GetOverview: h.overview,
    q.GetEventLog: h.event_log,
    q.GetCorrelationTrace: h.correlation_trace,
}

_CHECKPOINTS_SQL = text(
    "SELECT name, last_txid::text AS txid, last_position FROM projection_checkpoints WHERE name = ANY(:names)"
)
_CHECKPOINTS_JSON_SQL = (
    "SELECT json_object_agg(name, json_build_array(last_txid::text, last_position)) "
    "FROM projection_checkpoints WHERE name = ANY(%(names)s)"
)
_SINGLE_PROLOGUE = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class _DroppedConnection(psycopg2.OperationalError):
    """The server closed a pooled connection under a query."""


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
    ) -> None:
        self.engine = engine
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
        if extra is None and type(query) not in ROUTES:
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
        entry, _hit = self.cache.get_or_compute(
            query.cache_key(), compute, accept=lambda e: e.covers(target, query.projections)
        )
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
        handler = ROUTES[type(query)]
        for attempt in (1, 2):
            remaining = max(0.05, deadline - time.perf_counter())
            try:
                with translate_db_errors():
                    value, cursors = self._run(handler, query, min(self.timeout, remaining))
                return CacheEntry(value, ttl, cursors)
            except InfrastructureError as exc:
                # A pooled connection the server dropped (a restart): a read is safe to run again,
                # once, on a fresh connection. Anything else (timeouts included) is the answer.
                if attempt == 2 or not isinstance(exc.__cause__, _DroppedConnection):
                    raise
        raise AssertionError("unreachable")

    def _run(
        self, handler: Handler, query: q.Query, timeout: float
    ) -> tuple[Any, dict[str, tuple[int, int]]]:
        """Run `handler` in a read-only REPEATABLE READ transaction under a server-side timeout,
        on the raw driver connection (no per-statement SQLAlchemy result machinery).

        The driver is switched to autocommit for the duration so the transaction settings travel
        in the same message as the first statement instead of costing their own round trips:
        * a single-statement handler: `SET TRANSACTION ...; SET LOCAL statement_timeout = n; <its
          SELECT>` is one message, run by the server as one implicit transaction (one round
          trip; its checkpoint cursors are part of that statement, so of the same snapshot);
        * otherwise `BEGIN ...; SET LOCAL ...; <read the checkpoints>` opens the transaction,
          the handler's statements follow, then COMMIT. The checkpoints and every statement
          share the REPEATABLE READ snapshot, so the cursors describe exactly what was read."""
        ms = max(1, int(timeout * 1000))
        single = getattr(handler, "single_statement", False)
        fairy = self.engine.raw_connection()
        dbapi = driver_connection(fairy)
        autocommit = dbapi.autocommit  # as the engine configured it; restored on release
        prepared = fairy.info.setdefault("cqrs_query_prepared", set())  # forgotten with the connection
        healthy = False
        try:
            dbapi.autocommit = True
            with dbapi.cursor() as cur:
                if single:
                    reader = SqlReader(
                        cur,
                        f"{_SINGLE_PROLOGUE}SET LOCAL statement_timeout = {ms}; ",
                        query.projections,
                        timeout_ms=ms,
                        prepared=prepared,
                    )
                    value = handler(reader, query)
                    if reader.statements != 1:
                        raise AssertionError(
                            f"{handler.__name__} is marked single-statement but sent "
                            f"{reader.statements} statements"
                        )
                else:
                    reader = SqlReader(cur, "", query.projections, timeout_ms=ms, prepared=prepared)
                    cur.execute(
                        f"{_BEGIN}SET LOCAL statement_timeout = {ms}; {_CHECKPOINTS_JSON_SQL}",
                        {"names": list(query.projections)},
                    )
                    row = cur.fetchone()
                    assert row is not None  # the checkpoints' JSON aggregate is one row
                    reader.take_cursors(row[0])
                    value = handler(reader, query)
                    cur.execute("COMMIT")
            if reader.cursors is None:
                raise AssertionError(f"{handler.__name__} did not read the checkpoint cursors")
            healthy = True
            return value, reader.cursors
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if dbapi.closed:
                raise _DroppedConnection(str(exc)) from exc
            raise
        finally:
            self._release(fairy, dbapi, healthy, autocommit)

    @staticmethod
    def _release(fairy: Any, dbapi: Any, healthy: bool, autocommit: bool) -> None:
        """Return the connection to the pool exactly as it was taken: no transaction open, the
        driver's autocommit as before. If that cannot be guaranteed, the connection is discarded."""
        reusable = False
        try:
            if not dbapi.closed:
                if not healthy and dbapi.info.transaction_status != _IDLE:
                    with dbapi.cursor() as cur:
                        cur.execute("ROLLBACK")
                dbapi.autocommit = autocommit
                reusable = True
        except Exception:  # noqa: BLE001 - whatever went wrong, this connection is not reusable
            log.debug("discarding a query connection that could not be reset", exc_info=True)
        if reusable:
            fairy.close()
        else:
            fairy.invalidate()

    def _target(self, position: int) -> tuple[int, int]:
        with translate_db_errors(), self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT txid::text FROM events WHERE position = :p"), {"p": position}
            ).first()
        if row is None:
            raise ValidationError(f"There is no event at position {position} (yet).")
        return int(row[0]), position

    def _wait_until_applied(
        self, target: tuple[int, int], projections: tuple[str, ...], deadline: float
    ) -> None:
        delay = 0.002
        behind: dict[str, tuple[int, int]] = {}
        while True:
            with translate_db_errors(), self.engine.connect() as conn:
                cursors = {
                    r.name: (int(r.txid), int(r.last_position))
                    for r in conn.execute(_CHECKPOINTS_SQL, {"names": list(projections)})
                }
                behind = {p: cursors.get(p, (0, 0)) for p in projections if cursors.get(p, (0, 0)) < target}
                if not behind:
                    return
                if time.perf_counter() + delay > deadline:
                    head = conn.execute(text("SELECT COALESCE(max(position), 0) FROM events")).scalar_one()
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
