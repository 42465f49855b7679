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

from sqlalchemy import Engine

from cqrs_core.config import Settings
from cqrs_core.db import make_engine, migrate, redact, resolve_database_url, translate_db_errors
from cqrs_core.health import (
    ComponentCheck,
    HealthReport,
    check_health,
    projections_check,
    scheduler_check,
    views_check,
)
from cqrs_core.service import CQRSService, CQRSServiceBuilder

log = logging.getLogger(__name__)


@dataclass
class AppRuntime:
    """What one app process shares between all sessions: settings, the database engine and the
    health checks to run. `close()` releases everything it holds."""

    settings: Settings
    database_url: str
    engine: Engine
    service: CQRSService | None = None
    scheduler: Any = None  # cqrs_core.scheduler.ProjectionRuntime when projections run here
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
            return report

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.service is not None:
            self.service.close()
        self.engine.dispose()


def open_runtime(settings: Settings) -> AppRuntime:
    """Resolve the database (starting the embedded server when none is configured), bring the
    schema to head and open the engine. Safe when several app processes start at once."""
    url = resolve_database_url(settings)
    with translate_db_errors():
        applied = migrate(url)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    engine = make_engine(url, application_name="cqrs-console-app")
    service = CQRSServiceBuilder(settings).with_database_url(url).with_migrations(False).build()
    scheduler = None
    if settings.run_projections:
        from cqrs_core.scheduler import ProjectionRuntime

        scheduler = ProjectionRuntime(service.engine, settings, manager=service.projections)
        scheduler.start()
    checks = [
        projections_check(service.projections, settings.stale_lag_threshold_seconds),
        scheduler_check(scheduler),
        views_check(service.projections, max(60.0, settings.view_refresh_seconds * 4)),
    ]
    return AppRuntime(settings=settings, database_url=url, engine=engine, service=service, scheduler=scheduler,
                      applied_migrations=applied, health_checks=checks)
