"""The process-wide objects the Streamlit app needs, opened once per process.

`app.py` wraps `open_runtime` in one `@st.cache_resource` factory; pages reach the runtime
through `st.session_state.runtime` and never open engines of their own. Nothing here imports
Streamlit, so the runtime also works in tests and scripts.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import (
    make_engine,
    migrate,
    redact,
    resolve_database_url,
    runtime_connection,
    translate_db_errors,
)
from cqrs_core.ops.health import (
    ComponentCheck,
    HealthReport,
    check_health,
    projections_check,
    scheduler_check,
    views_check,
)
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


def open_runtime(settings: Settings) -> AppRuntime:
    """Resolve the database (starting the embedded server when none is configured), bring the
    schema to head and open the engine. Safe when several app processes start at once."""
    owner_url = resolve_database_url(settings)
    with translate_db_errors():
        applied = migrate(owner_url)
        # Everything after the migrations runs with the runtime role's rights only (no owner, no superuser).
        url, role = runtime_connection(settings, owner_url)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    engine = make_engine(url, application_name="cqrs-console-app", role=role)
    service = (
        CQRSServiceBuilder(settings)
        .with_database_url(url)
        .with_database_role(role)
        .with_migrations(False)
        .build()
    )
    scheduler = None
    if settings.run_projections:
        from cqrs_core.projections.engine.runtime import ProjectionRuntime

        scheduler = ProjectionRuntime(service.engine, settings, manager=service.projections)
        scheduler.start()
    checks = [
        projections_check(service.projections, settings.stale_lag_threshold_seconds),
        scheduler_check(scheduler),
        views_check(service.projections, max(60.0, settings.view_refresh_seconds * 4)),
    ]
    reviver = None
    if not settings.database_url:
        reviver = EmbeddedServerReviver(settings)
        for watched in {
            id(e): e for e in (engine, service.engine, service.command_engine, service.read_engine)
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
