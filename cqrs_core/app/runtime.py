"""The process-wide objects the Streamlit app needs, opened once per process.

`PROCESS_RUNTIME` holds the one `AppRuntime` of this process: opened on first use, or ahead of
the first visitor by `cqrs-console serve` (`open_in_background` once the server listens).
`app.py` reaches it through one `@st.cache_resource` factory whose release closes it, and hands
it to the pages through `st.session_state.runtime`; pages never open engines of their own.
Nothing here imports Streamlit, so the runtime also works in tests and scripts.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event, make_url
from sqlalchemy.exc import OperationalError

from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import (
    make_engine,
    migrate,
    redact,
    resolve_database_url,
    resolve_direct_database_url,
    runtime_connection,
    translate_db_errors,
)
from cqrs_core.ops.health import (
    ComponentCheck,
    HealthReport,
    SharedStatus,
    check_health,
    projections_check,
    replica_check,
    scheduler_check,
    views_check,
)
from cqrs_core.ops.webhooks.check import notifications_check
from cqrs_core.service import CQRSService, CQRSServiceBuilder

log = logging.getLogger(__name__)


class EmbeddedServerReviver:
    """Starts the embedded server again when the app finds it gone (killed, or shut down by
    PostgreSQL after a full disk); without this, a long-running app process would fail every
    request until someone restarted it. A connection error on a watched engine or an unhealthy
    database check calls `poke()`; the restart runs in one background thread, at most once per
    `min_interval` seconds, whichever thread noticed."""

    def __init__(self, settings: Settings, min_interval: float = 5.0) -> None:
        self.settings = settings
        self.min_interval = min_interval
        self.restarts = 0
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        self._thread: threading.Thread | None = None

    def watch(self, engine: Engine) -> None:
        event.listen(engine, "handle_error", self._on_error)
        # Paths on raw DBAPI connections (the query bus) bypass handle_error; every new
        # connection goes through do_connect, and a dead server's pool has to open new ones.
        event.listen(engine, "do_connect", self._on_connect)

    def _on_connect(self, _dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        self.poke()  # cheap: at most one short check every `min_interval` seconds

    def _on_error(self, context: Any) -> None:
        if context.is_disconnect or isinstance(context.sqlalchemy_exception, OperationalError):
            self.poke()

    def poke(self) -> bool:
        """Start a restart attempt unless one runs or ran within `min_interval`; True if started."""
        with self._lock:
            now = time.monotonic()
            if self._thread is not None and self._thread.is_alive():
                return False
            if now - self._last_attempt < self.min_interval:
                return False
            self._last_attempt = now
            self._thread = threading.Thread(target=self._revive, name="embedded-server-revival", daemon=True)
            self._thread.start()
            return True

    def _revive(self) -> None:
        from cqrs_core.infra.db import embedded_pgdata, postmaster_state, start_embedded_server

        if postmaster_state(embedded_pgdata(self.settings.data_dir)).status == "running":
            return  # the error was something else (a dropped connection, a timeout)
        try:
            start_embedded_server(self.settings.data_dir, self.settings.database_name)
        except Exception:
            log.error("the embedded PostgreSQL server could not be restarted; will try again", exc_info=True)
            return
        self.restarts += 1
        log.warning("the embedded PostgreSQL server had stopped and was started again")


@dataclass
class AppRuntime:
    """What one app process shares between all sessions: settings, the database engine and the
    health checks to run. `close()` releases everything it holds."""

    settings: Settings
    database_url: str
    engine: Engine
    service: CQRSService
    scheduler: Any = None  # cqrs_core.projections.engine.runtime.ProjectionRuntime when projections run here
    reviver: EmbeddedServerReviver | None = None  # embedded mode: restarts a server that died
    applied_migrations: list[str] = field(default_factory=list)
    # Checks other parts of the runtime (projections, scheduler) add to the health report.
    health_checks: list[ComponentCheck] = field(default_factory=list)
    _health: tuple[float, HealthReport] | None = field(default=None, repr=False)
    _health_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def connection_label(self) -> str:
        """Where the data lives, safe to show: a redacted URL or the embedded server's data dir."""
        if self.settings.database_url:
            return redact(self.database_url)
        return f"embedded PostgreSQL at {self.settings.data_dir.expanduser().resolve()}"

    @property
    def connection_short(self) -> str:
        """Where the data lives in a few words, for the sidebar: "database cqrs on db1:5432", "on
        a local socket" for a Unix socket, or the embedded server's data dir (`connection_label`
        has it all). Never a user or a password."""
        if not self.settings.database_url:
            return f"embedded PostgreSQL in {self.settings.data_dir}"
        try:
            url = make_url(self.database_url)
        except Exception:  # not a URL SQLAlchemy reads: say nothing rather than something wrong
            return "an external PostgreSQL server"
        host = url.host or str(url.query.get("host") or "")
        where = "a local socket" if not host or host.startswith("/") else f"{host}:{url.port or 5432}"
        return f"database {url.database or '?'} on {where}"

    def health(self, max_age_seconds: float = 2.0) -> HealthReport:
        """The health report, re-checked when the last one is older than `max_age_seconds`
        (the sidebar and a page asking in the same rerun share one check)."""
        with self._health_lock:
            now = time.monotonic()
            if self._health is not None and now - self._health[0] <= max_age_seconds:
                return self._health[1]
            report = check_health(self.engine, self.health_checks)
            self._health = (now, report)
        database = report.component("database")
        if self.reviver is not None and database is not None and database.status == "unhealthy":
            self.reviver.poke()
        return report

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.service.close()
        self.engine.dispose()


def open_runtime(settings: Settings, projection_worker: Callable[[], Any] | None = None) -> AppRuntime:
    """Resolve the database (starting the embedded server when none is configured), bring the
    schema to head and open the engine. Safe when several app processes start at once.

    The projections run here only with CQRS_PROJECTIONS_IN=app. `projection_worker` returns the
    worker `cqrs-console serve` supervises next to this process (None when there is none), for
    the health report's scheduler line."""
    owner_url = resolve_database_url(settings)
    with translate_db_errors():
        applied = migrate(resolve_direct_database_url(settings))  # never through a pooler
        # Everything after the migrations runs with the runtime role's rights only (no owner, no superuser).
        url, role = runtime_connection(settings, owner_url)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    pooled = settings.behind_pooler
    engine = make_engine(
        url,
        application_name="cqrs-console-app",
        role=role,
        pooled=pooled,
        prepare=settings.prepares_statements(pooled),
    )
    service = (
        CQRSServiceBuilder(settings)
        .with_database_url(url)
        .with_direct_database_url(settings.direct_database_url if pooled else None)
        .with_database_role(role)
        .with_migrations(False)
        .build()
    )
    scheduler = None
    if settings.projections_in == "app":
        scheduler = service.projection_runtime()  # with the alert evaluator
        scheduler.start()
    statuses = SharedStatus(service.projections)  # one status read per report for both checks
    checks = [
        projections_check(statuses, settings.stale_lag_threshold_seconds),
        scheduler_check(scheduler, settings.projections_in, projection_worker, statuses),
        views_check(service.projections, max(60.0, settings.view_refresh_seconds * 4)),
        notifications_check(settings),
    ]
    if service.replica is not None:
        checks.append(replica_check(service.replica))
    reviver = None
    if not settings.database_url:
        reviver = EmbeddedServerReviver(settings)
        for watched in {
            id(e): e
            for e in (
                engine,
                service.engine,
                service.command_engine,
                service.read_engine,
                service.direct_engine,
            )
        }.values():
            reviver.watch(watched)
    return AppRuntime(
        settings=settings,
        database_url=url,
        engine=engine,
        service=service,
        scheduler=scheduler,
        reviver=reviver,
        applied_migrations=applied,
        health_checks=checks,
    )


class RuntimeHolder:
    """The one `AppRuntime` of a process, opened on first use (thread-safe) and closed on release.

    Several threads asking at once share one opening: the first one opens, the others wait for
    its result (or its error). A failed opening is not kept: the next `get()` tries again (the
    visitor then sees why). `release()` closes the runtime and forgets it, so that the next
    `get()` opens a fresh one (with the settings of that moment)."""

    def __init__(self, opener: Callable[[Settings, Callable[[], Any]], AppRuntime] = open_runtime) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._runtime: AppRuntime | None = None
        self._opening: Future[AppRuntime] | None = None
        # The worker `cqrs-console serve` supervises in this process, if any (see its `pid`).
        self.projection_worker: Any = None

    @property
    def is_open(self) -> bool:
        return self._runtime is not None

    def get(self) -> AppRuntime:
        """The runtime, opened now if nobody has (this call then takes as long as the opening)."""
        with self._lock:
            if self._runtime is not None:
                return self._runtime
            opening = self._opening
            opener = opening is None
            if opening is None:
                opening = self._opening = Future()
        if not opener:
            return opening.result()
        started = time.monotonic()
        try:
            runtime = self._opener(get_settings(), lambda: self.projection_worker)
        except BaseException as exc:
            with self._lock:
                self._opening = None
            opening.set_exception(exc)
            raise
        with self._lock:
            self._runtime, self._opening = runtime, None
        opening.set_result(runtime)
        log.info("the console's runtime is open (%.1f s)", time.monotonic() - started)
        return runtime

    def release(self, runtime: AppRuntime | None = None, wait_for_opening: bool = True) -> None:
        """Close the runtime (only if it is `runtime`, when one is given) and forget it. An
        opening under way is waited for first, unless `wait_for_opening` is False (then it is left
        alone: a process on its way out does not wait for a database to start)."""
        with self._lock:
            opening = self._opening
        if opening is not None:
            if not wait_for_opening:
                return
            try:
                opening.result()
            except BaseException:  # the opener's caller saw it
                log.debug("the runtime being released had failed to open", exc_info=True)
        with self._lock:
            current = self._runtime
            if current is None or (runtime is not None and runtime is not current):
                return  # released already
            self._runtime = None
        current.close()

    def open_in_background(self, then_import: Iterable[str] = ()) -> threading.Thread:
        """Open the runtime (and run its first health check, which every first page shows) in a
        daemon thread, so that the first visitor does not wait for it, then import the modules
        of `then_import` (what the first page run would import). A failure is logged in one
        line; the first visitor's `get()` tries again and shows why."""

        def open_now() -> None:
            try:
                self.get().health()
            except (Exception, SystemExit) as exc:  # SystemExit: a SettingsError, one line
                reason = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
                log.warning("the console's runtime did not open yet: %s", reason)
                log.debug("the runtime did not open", exc_info=True)
            for name in then_import:
                try:
                    importlib.import_module(name)
                except Exception:  # the page that needs it will say so
                    log.debug("could not import %s ahead of the first page", name, exc_info=True)

        thread = threading.Thread(target=open_now, name="open-runtime", daemon=True)
        thread.start()
        return thread


# The runtime of this process: app.py's pages and `cqrs-console serve` share it.
PROCESS_RUNTIME = RuntimeHolder()
