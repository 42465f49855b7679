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
from cqrs_core.eventlog.notifier import AppendNotifier
from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import make_engine, migrate, resolve_database_url, runtime_connection
from cqrs_core.infra.metrics import LatencySummary, MetricsRecorder
from cqrs_core.infra.rate_limit import SharedRateLimiter
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
from cqrs_core.read.replica import ReadReplica
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
        read_replica: bool = False,
        direct_engine: Engine | None = None,
        alert_notify: Callable[[AlertNotice], None] = log_notice,
        append_notifier: AppendNotifier | None = None,
    ) -> None:
        """`read_replica`: `read_engine` is a replica of `engine` (not another pool of it).
        `append_notifier`: announces the command bus's appends (its `command_engine` was made with
        `coalesced_notify=True`); None when the trigger announces them."""
        self.append_notifier = append_notifier
        self.settings = settings
        # Told of every change of an alert's state: by the command bus for the steps it commits,
        # by the alert evaluator for the steps it takes while the database is away.
        self.alert_notify = alert_notify
        # The role every connection takes (SET ROLE), for services built from this one's URL.
        self.database_role = database_role
        self.engine = engine
        self.read_engine = read_engine
        self.command_engine = command_engine
        # The projections side: LISTEN and session advisory locks need the server itself, not a
        # pooler in transaction mode (CQRS_DIRECT_DATABASE_URL); without a pooler, `engine`.
        self.direct_engine = direct_engine if direct_engine is not None else engine
        self.command_timeout, self.query_timeout = command_timeout, query_timeout
        self.event_store = EventStore(engine, known_event_types=EVENT_TYPES)
        self.command_metrics = MetricsRecorder("command")
        self.query_metrics = MetricsRecorder("query")
        # Both limits live in the database (through the command pool: autocommit, and the primary
        # even when queries read a replica), so they hold across every process of a deployment.
        self.limiter = SharedRateLimiter(command_engine, "commands", rate, burst, timeout=command_timeout)
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
            appended=append_notifier.appended if append_notifier is not None else None,
        )
        self.caching = caching
        # A read replica (CQRS_READ_DATABASE_URL): queries read there while it is reachable and
        # close enough, and otherwise go where CQRS_READ_REPLICA_FALLBACK says; the query bus
        # reads the primary through `engine` then.
        self.replica = (
            ReadReplica(
                read_engine,
                engine,
                fallback=settings.read_replica_fallback,
                max_lag_seconds=settings.read_replica_max_lag_seconds,
            )
            if read_replica
            else None
        )
        self.query_bus = QueryBus(
            engine if self.replica is not None else read_engine,
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
            limiter=SharedRateLimiter(
                command_engine,
                "queries",
                settings.query_rate_limit_per_second,
                settings.query_rate_limit_burst,
                timeout=query_timeout,
            ),
            routes={
                # The trace says "skipped" for an event a projection does not apply.
                GetCorrelationTrace: functools.partial(
                    correlation_trace, applies={name: p.applies_to for name, p in PROJECTIONS.items()}
                ),
            },
            replica=self.replica,
        )
        self._projections: Any = None
        self._closed = threading.Event()

    @property
    def projections(self) -> Any:
        """The projection manager (created on first use): status, pause/resume, rebuild, parked events."""
        if self._projections is None:
            from cqrs_core.projections import ProjectionManager

            self._projections = ProjectionManager(self.direct_engine, self.settings)
        return self._projections

    @property
    def direct_url(self) -> str | None:
        """The URL of `direct_engine` when it is not `engine`'s (a pooler is in between), else None;
        for services built from this one's URL (with its password)."""
        if self.direct_engine is self.engine:
            return None
        return self.direct_engine.url.render_as_string(hide_password=False)

    def projection_runtime(self) -> Any:
        """A ProjectionRuntime (not started) for this process: the projections, their periodic
        jobs, and the alert evaluator, which evaluates the rules every CQRS_ALERT_EVALUATE_SECONDS
        in whichever process holds its leader lock (the others skip) and tells `alert_notify` of
        every change."""
        from cqrs_core.ops.alerts.evaluator import AlertEvaluator, Remedy
        from cqrs_core.ops.alerts.facts import FactGatherer
        from cqrs_core.ops.auto_restart import auto_restart_stalled
        from cqrs_core.ops.webhooks import open_notifier
        from cqrs_core.projections.engine.runtime import JobHistory, PeriodicJob, ProjectionRuntime

        # The leader lock is a session advisory lock: never through a pooler.
        engine = self.direct_engine
        # Every change is logged (or given to `alert_notify`) and sent to the severity's webhook,
        # if one is set; the notifier's submit never blocks the evaluation.
        notifier = open_notifier(self.settings, engine)

        def notify(notice: AlertNotice) -> None:
            self.alert_notify(notice)
            notifier.submit(notice)

        def close() -> None:
            evaluator.close()
            notifier.close()

        history = JobHistory()
        gatherer = FactGatherer(engine, self.projections, self.settings, history)
        # A stalled projection's remedy (CQRS_ALERT_AUTO_RESTART, off by default: then it does
        # nothing and says None): restart its runner if this process runs it.
        restart = Remedy(
            "auto_restart", lambda projection: auto_restart_stalled(self.settings, runtime, projection)
        )
        evaluator = AlertEvaluator(
            engine,
            self.settings,
            self.command_bus,
            gatherer,
            notify=notify,
            remedies={"projection_stalled": restart},
        )
        job = PeriodicJob("alerts", self.settings.alert_evaluate_seconds, evaluator.evaluate, close)
        runtime = ProjectionRuntime(engine, self.settings, self.projections, jobs=[job], history=history)
        return runtime

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
        if self.append_notifier is not None:
            self.append_notifier.close()
        self.engine.dispose()
        self.command_engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
        if self.direct_engine is not self.engine:
            self.direct_engine.dispose()


class CQRSServiceBuilder:
    """Fluent builder: `CQRSServiceBuilder().with_database_url(url).with_command_timeout(30).build()`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._url: str | None = None
        self._read_url: str | None = None
        self._direct_url: str | None = None
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

    def with_direct_database_url(self, url: str | None) -> CQRSServiceBuilder:
        """The URL that reaches the server itself when `with_database_url`'s goes through a pooler
        in transaction mode (pgbouncer): migrations and the projections side (LISTEN, advisory
        locks) use it, and the pooled connections keep no session state (no PREPARE unless
        CQRS_PREPARED_STATEMENTS=on, no SET ROLE: the pooled login must be the role's own).
        Default: with a URL given here, none; without one, CQRS_DIRECT_DATABASE_URL."""
        self._direct_url = url
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
        direct = self._direct_url or (self._settings.direct_database_url if self._url is None else None)
        if self._migrate:
            migrate(direct or url)  # as the URL's user: the owner of the schema, never through a pooler
        role = self._role
        if not self._role_given and self._url is None:
            runtime, role = runtime_connection(self._settings, direct or url)
            if direct is None:
                url = runtime
            else:
                direct = runtime
        pooled = direct is not None and direct != url
        # The same sessions on every engine of the command and query paths (see `make_engine`).
        sessions = functools.partial(
            make_engine,
            pool_size=self._pool_size,
            role=role,
            pooled=pooled,
            prepare=self._settings.prepares_statements(pooled),
        )
        engine = sessions(url, application_name=self._application_name)
        # Its appends skip the trigger's NOTIFY; the service's AppendNotifier announces them, coalesced
        # (not behind a pooler, where the trigger notifies as before: see `make_engine`).
        command_engine = sessions(
            url,
            pre_ping=False,
            autocommit=True,
            application_name="cqrs-commands",
            coalesced_notify=not pooled,
        )
        # Queries get their own pool without pre-ping: the query bus runs a read again once on a
        # fresh connection when the server dropped the pooled one, so the ping's round trip
        # (half of a cold detail query's) buys nothing there. Behind a pooler, a read URL is
        # taken to go through one too.
        read_url = self._read_url or self._settings.read_database_url
        read_engine = sessions(read_url or url, pre_ping=False, application_name="cqrs-queries")
        direct_engine = (
            make_engine(direct, pool_size=self._pool_size, application_name="cqrs-projections", role=role)
            if pooled and direct is not None
            else None
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
            read_replica=read_url is not None and read_url != url,
            direct_engine=direct_engine,
            alert_notify=self._alert_notify,
            # On an engine of its own (one connection, held): not a slot of the service's pools.
            append_notifier=None
            if pooled
            else AppendNotifier(sessions(url, pool_size=1, pre_ping=False, application_name="cqrs-notify")),
        )
        return service
