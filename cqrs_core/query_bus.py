"""The query bus: routes a query to its handler inside a read-only, snapshot-consistent
transaction with a server-side timeout; caches results; honours read-your-writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, text

from cqrs_core import queries as q
from cqrs_core import query_handlers as h
from cqrs_core.db import set_statement_timeout, translate_db_errors
from cqrs_core.errors import CQRSError, StaleReadError, ValidationError
from cqrs_core.metrics import MetricsRecorder
from cqrs_core.query_cache import CacheEntry, QueryCache

log = logging.getLogger(__name__)

Handler = Callable[[Connection, Any], Any]

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


class QueryBus:
    def __init__(self, engine: Engine, metrics: MetricsRecorder, *, timeout: float, caching: bool,
                 cache_size: int, default_ttl: float,
                 extra_routes: dict[type[q.Query], Callable[[Any], Any]] | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.timeout = timeout
        self.caching = caching
        self.default_ttl = default_ttl
        self.cache = QueryCache(cache_size)
        # Queries answered outside the read models (projection status, metrics): no SQL snapshot.
        self.extra_routes = dict(extra_routes or {})

    def execute(self, query: q.Query, *, min_position: int | None = None, cache: bool = True) -> Any:
        started = time.perf_counter()
        name = type(query).__name__
        try:
            if not isinstance(query, q.Query):
                raise ValidationError("That is not a query; build one with QueryFactory.")
            if min_position is not None and (not isinstance(min_position, int) or min_position < 0):
                raise ValidationError("min position must be a whole number ≥ 0.")
            value = self._execute(query, min_position or 0, cache, started)
        except CQRSError as exc:
            self.metrics.record(name, (time.perf_counter() - started) * 1000, exc.category)
            raise
        except Exception as exc:
            self.metrics.record(name, (time.perf_counter() - started) * 1000, "infrastructure")
            log.exception("query %s failed unexpectedly", name)
            raise CQRSError(query=name) from exc
        self.metrics.record(name, (time.perf_counter() - started) * 1000)
        return value

    def _execute(self, query: q.Query, min_position: int, use_cache: bool, started: float) -> Any:
        extra = self.extra_routes.get(type(query))
        if extra is None and type(query) not in ROUTES:
            raise ValidationError(f"No handler for {type(query).__name__}.")
        deadline = started + self.timeout
        target = self._target(min_position) if (min_position and query.projections) else None
        ttl = query.ttl_seconds if query.ttl_seconds is not None else self.default_ttl

        def compute() -> CacheEntry:
            if target is not None:
                self._wait_until_applied(target, query.projections, deadline)
            if extra is not None:
                return CacheEntry(extra(query), ttl)
            return self._read(query, ttl, deadline)

        if not (use_cache and self.caching and query.cacheable):
            return compute().value
        entry, _hit = self.cache.get_or_compute(
            query.cache_key(), compute, accept=lambda e: e.covers(target, query.projections))
        if not entry.covers(target, query.projections):  # a concurrent leader computed an older value
            entry = compute()
        return entry.value

    def _read(self, query: q.Query, ttl: float, deadline: float) -> CacheEntry:
        remaining = max(0.05, deadline - time.perf_counter())
        with translate_db_errors(), self.engine.connect() as conn:
            # REPEATABLE READ: the checkpoints and the read-model rows come from one snapshot,
            # so the cursors stored with the cache entry describe exactly what it contains.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                set_statement_timeout(conn, min(self.timeout, remaining))
                cursors: dict[str, tuple[int, int]] = {}
                if query.projections:
                    for r in conn.execute(_CHECKPOINTS_SQL, {"names": list(query.projections)}):
                        cursors[r.name] = (int(r.txid), int(r.last_position))
                value = ROUTES[type(query)](conn, query)
        return CacheEntry(value, ttl, cursors)

    def _target(self, position: int) -> tuple[int, int]:
        with translate_db_errors(), self.engine.connect() as conn:
            row = conn.execute(text("SELECT txid::text FROM events WHERE position = :p"), {"p": position}).first()
        if row is None:
            raise ValidationError(f"There is no event at position {position} (yet).")
        return int(row[0]), position

    def _wait_until_applied(self, target: tuple[int, int], projections: tuple[str, ...], deadline: float) -> None:
        delay = 0.002
        behind: dict[str, tuple[int, int]] = {}
        while True:
            with translate_db_errors(), self.engine.connect() as conn:
                cursors = {r.name: (int(r.txid), int(r.last_position))
                           for r in conn.execute(_CHECKPOINTS_SQL, {"names": list(projections)})}
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
            target=target[1], behind=behind,
        )
