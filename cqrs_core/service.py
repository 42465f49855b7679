"""The public entry point: CQRSServiceBuilder wires real adapters into a CQRSService."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.domain.events import EVENT_TYPES
from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import make_engine, migrate, resolve_database_url, runtime_connection
from cqrs_core.infra.metrics import LatencySummary, MetricsRecorder
from cqrs_core.infra.rate_limit import TokenBucketLimiter
from cqrs_core.ops.alerts.notice_log import log_notice
from cqrs_core.projections.registry import PROJECTIONS
from cqrs_core.read.handlers.event_log import correlation_trace
from cqrs_core.read.queries import (
    GetCorrelationTrace,
    GetLagHistory,
    GetMetrics,
    GetParkedEvents,
    GetProjectionStatus,
    GetStatistics,
    Query,
)
from cqrs_core.read.query_bus import QueryBus
from cqrs_core.read.query_cache import CacheStats
from cqrs_core.write.command_bus import CommandBus, CommandResult
from cqrs_core.write.commands import Command, RefreshStatistics
from cqrs_core.write.handlers import ProjectionControl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceMetrics:
    commands: list[LatencySummary]
    queries: list[LatencySummary]
    command_errors: dict[str, int]
    query_errors: dict[str, int]
    cache: CacheStats
    rate_limit_refusals: dict[str, int]


class CQRSService:
    """Executes commands and queries. Thread-safe; share one per process."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        read_engine: Engine,
        command_engine: Engine,
        *,
        command_timeout: float,
        query_timeout: float,
        caching: bool,
        rate: float,
        burst: int,
        database_role: str | None = None,
        alert_notify: Callable[[AlertNotice], None] = log_notice,
    ) -> None:
        self.settings = settings
        # Told of every change of an alert's state: by the command bus for the steps it commits,
        # by the alert evaluator for the steps it takes while the database is away.
        self.alert_notify = alert_notify
        # The role every connection takes (SET ROLE), for services built from this one's URL.
        self.database_role = database_role
        self.engine = engine
        self.read_engine = read_engine
        self.command_engine = command_engine
        self.command_timeout, self.query_timeout = command_timeout, query_timeout
        self.event_store = EventStore(engine, known_event_types=EVENT_TYPES)
        self.command_metrics = MetricsRecorder("command")
        self.query_metrics = MetricsRecorder("query")
        self.limiter = TokenBucketLimiter(rate, burst)
        self.command_bus = CommandBus(
            command_engine,
            self.event_store,
            settings,
            self.command_metrics,
            self.limiter,
            # Operator commands act on the projection manager, created on first use.
            operator_commands=ProjectionControl(lambda: self.projections),
            timeout=command_timeout,
            alert_notify=alert_notify,
        )
        self.caching = caching
        self.query_bus = QueryBus(
            read_engine,
            self.query_metrics,
            timeout=query_timeout,
            caching=caching,
            cache_size=settings.cache_size,
            default_ttl=settings.cache_ttl_seconds,
            extra_routes={
                GetProjectionStatus: lambda _q: self.projections.status(),
                GetLagHistory: self._lag_history,
                GetParkedEvents: lambda qq: self.projections.parked(
                    projection=qq.projection, status=qq.status
                ),
                GetMetrics: lambda _q: self.metrics(),
            },
            limiter=TokenBucketLimiter(settings.query_rate_limit_per_second, settings.query_rate_limit_burst),
            routes={
                # The trace says "skipped" for an event a projection does not apply.
                GetCorrelationTrace: functools.partial(
                    correlation_trace, applies={name: p.applies_to for name, p in PROJECTIONS.items()}
                ),
            },
        )
        self._projections: Any = None
        self._closed = threading.Event()

    @property
    def projections(self) -> Any:
        """The projection manager (created on first use): status, pause/resume, rebuild, parked events."""
        if self._projections is None:
            from cqrs_core.projections import ProjectionManager

            self._projections = ProjectionManager(self.engine, self.settings)
        return self._projections

    def projection_runtime(self) -> Any:
        """A ProjectionRuntime (not started) for this process: the projections, their periodic
        jobs, and the alert evaluator, which evaluates the rules every CQRS_ALERT_EVALUATE_SECONDS
        in whichever process holds its leader lock (the others skip) and tells `alert_notify` of
        every change."""
        from cqrs_core.ops.alerts.evaluator import AlertEvaluator
        from cqrs_core.ops.alerts.facts import FactGatherer
        from cqrs_core.projections.engine.runtime import JobHistory, PeriodicJob, ProjectionRuntime

        history = JobHistory()
        gatherer = FactGatherer(self.engine, self.projections, self.settings, history)
        evaluator = AlertEvaluator(
            self.engine, self.settings, self.command_bus, gatherer, notify=self.alert_notify
        )
        job = PeriodicJob("alerts", self.settings.alert_evaluate_seconds, evaluator.evaluate, evaluator.close)
        return ProjectionRuntime(self.engine, self.settings, self.projections, jobs=[job], history=history)

    def _lag_history(self, query: GetLagHistory) -> Any:
        since = query.since or (datetime.now(UTC) - timedelta(minutes=query.minutes))
        return self.projections.lag_history(query.projection, since)

    def execute_query(
        self, query: Query, *, min_position: int | None = None, cache: bool = True, actor: str | None = None
    ) -> Any:
        """Answer a query from the read models. With `min_position` (a CommandResult.position),
        waits until the read models include that event, up to the query timeout. `actor` is who
        asks (the pages pass the signed-in user): each answer not served from the cache takes
        one token of their query rate limit (CQRS_QUERY_RATE_LIMIT_*), RateLimitedError when
        none is left. Without an actor the query comes from this process's own code and is not
        limited."""
        return self.query_bus.execute(query, min_position=min_position, cache=cache, actor=actor)

    def metrics(self) -> ServiceMetrics:
        return ServiceMetrics(
            commands=self.command_metrics.summaries(),
            queries=self.query_metrics.summaries(),
            command_errors=self.command_metrics.errors_by_category(),
            query_errors=self.query_metrics.errors_by_category(),
            cache=self.query_bus.cache.snapshot(),
            rate_limit_refusals=dict(self.limiter.refusals),
        )

    def execute_command(self, command: Command, *, trusted_import: bool = False) -> CommandResult:
        """Run one command through the pipeline; raises a cqrs_core.infra.errors.CQRSError subclass.
        `trusted_import=True` (the demo seed and imports only, never a person's input) lets the
        command's `occurred_at` lie in the past; otherwise it must be within minutes of now."""
        result = self.command_bus.execute(command, trusted_import=trusted_import)
        if isinstance(command, RefreshStatistics):
            # Fresh views must not be hidden behind a statistics answer cached before the refresh.
            self.query_bus.cache.invalidate(f"{GetStatistics.__name__}:")
        return result

    def execute_many(
        self, commands: Sequence[Command], *, trusted_import: bool = False
    ) -> list[CommandResult]:
        """Run workflow commands in order as one all-or-nothing transaction (bulk loads, the demo
        seed): one result per command; a refused command writes nothing and raises its error.
        `trusted_import` as for `execute_command`."""
        return self.command_bus.execute_many(commands, trusted_import=trusted_import)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._projections is not None:
            self._projections.close()  # releases its advisory locks so another runner can take over
        self.engine.dispose()
        self.command_engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


class CQRSServiceBuilder:
    """Fluent builder: `CQRSServiceBuilder().with_database_url(url).with_command_timeout(30).build()`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._url: str | None = None
        self._read_url: str | None = None
        self._command_timeout = self._settings.command_timeout
        self._query_timeout = self._settings.query_timeout
        self._caching = self._settings.cache_enabled
        self._rate = self._settings.rate_limit_per_second
        self._burst = self._settings.rate_limit_burst
        self._migrate = True
        self._pool_size = 10
        self._role: str | None = None
        self._role_given = False
        self._alert_notify: Callable[[AlertNotice], None] = log_notice
        self._application_name = "cqrs-console"

    def with_database_url(self, url: str) -> CQRSServiceBuilder:
        self._url = url
        return self

    def with_database_role(self, role: str | None) -> CQRSServiceBuilder:
        """Every connection takes `role` (SET ROLE) when the URL's user may, and so has that role's
        rights only; None keeps the URL's own rights. Default: with a URL given here, the URL's own
        rights; without one, the runtime's role from the settings (`CQRS_DATABASE_ROLE`)."""
        self._role, self._role_given = role, True
        return self

    def with_read_database_url(self, url: str) -> CQRSServiceBuilder:
        self._read_url = url
        return self

    def with_command_timeout(self, seconds: float) -> CQRSServiceBuilder:
        self._command_timeout = float(seconds)
        return self

    def with_query_timeout(self, seconds: float) -> CQRSServiceBuilder:
        self._query_timeout = float(seconds)
        return self

    def enable_caching(self, enabled: bool = True) -> CQRSServiceBuilder:
        self._caching = bool(enabled)
        return self

    def with_rate_limit(self, per_second: float, burst: int | None = None) -> CQRSServiceBuilder:
        self._rate = float(per_second)
        self._burst = int(burst if burst is not None else max(1, per_second))
        return self

    def with_migrations(self, enabled: bool) -> CQRSServiceBuilder:
        self._migrate = enabled
        return self

    def with_alert_notify(self, notify: Callable[[AlertNotice], None]) -> CQRSServiceBuilder:
        """Who is told of every change of an alert's state (default: a line in the log). It is
        called after the change is committed, or at once while the database is away; whatever it
        raises is logged and goes no further."""
        self._alert_notify = notify
        return self

    def with_application_name(self, name: str) -> CQRSServiceBuilder:
        """How the main engine's sessions (projections, jobs) show in pg_stat_activity."""
        self._application_name = name
        return self

    def with_pool_size(self, size: int) -> CQRSServiceBuilder:
        self._pool_size = size
        return self

    def build(self) -> CQRSService:
        url = self._url or resolve_database_url(self._settings)
        if self._migrate:
            migrate(url)  # as the URL's user: the owner of the schema
        role = self._role
        if not self._role_given and self._url is None:
            url, role = runtime_connection(self._settings, url)
        engine = make_engine(
            url, pool_size=self._pool_size, role=role, application_name=self._application_name
        )
        command_engine = make_engine(
            url,
            pool_size=self._pool_size,
            pre_ping=False,
            autocommit=True,
            application_name="cqrs-commands",
            role=role,
        )
        # Queries get their own pool without pre-ping: the query bus runs a read again once on a
        # fresh connection when the server dropped the pooled one, so the ping's round trip
        # (half of a cold detail query's) buys nothing there.
        read_url = self._read_url or self._settings.read_database_url or url
        read_engine = make_engine(
            read_url, pool_size=self._pool_size, pre_ping=False, application_name="cqrs-queries", role=role
        )
        service = CQRSService(
            self._settings,
            engine,
            read_engine,
            command_engine,
            command_timeout=self._command_timeout,
            query_timeout=self._query_timeout,
            caching=self._caching,
            rate=self._rate,
            burst=self._burst,
            database_role=role,
            alert_notify=self._alert_notify,
        )
        return service
