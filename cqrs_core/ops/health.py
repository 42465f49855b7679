"""Health of the system as one report: a list of component checks, each healthy, degraded or
unhealthy with one line of detail, plus the headline numbers (database latency, event count,
head position, migration revision).

The core checks cover the database, the schema and the event log. Other parts of the system
(projections, the scheduler) add their own checks by passing `extra_checks`; a check is any
callable `(engine) -> ComponentHealth`. A check that raises is reported as unhealthy under its
`component_name` attribute, or its function name without `check_` (`check_event_log` →
"event log"); it never breaks the report.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, inspect

from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.db import MIGRATIONS_DIR, ping, translate_db_errors
from cqrs_core.infra.errors import CQRSError

log = logging.getLogger(__name__)

Status = Literal["healthy", "degraded", "unhealthy"]
_SEVERITY: dict[str, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}

# A round trip slower than this still works but makes every page feel sluggish.
SLOW_DATABASE_MS = 250.0
# The projections' status is read once for the checks of one report (they run one after another).
SHARED_STATUS_SECONDS = 1.0


@dataclass(frozen=True)
class ComponentHealth:
    """One line of the health table. `metrics` carries numbers a check measured (for the report
    headline and for `--json`), e.g. `{"latency_ms": 1.2}`."""

    name: str
    status: Status
    detail: str
    metrics: Mapping[str, Any] = field(default_factory=dict)


ComponentCheck = Callable[[Engine], ComponentHealth]


@dataclass(frozen=True)
class HealthReport:
    status: Status
    components: list[ComponentHealth]
    database_latency_ms: float | None
    event_count: int | None
    head_position: int | None
    migration_revision: str | None
    checked_at: datetime

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"

    def component(self, name: str) -> ComponentHealth | None:
        return next((c for c in self.components if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checked_at"] = self.checked_at.isoformat()
        data["components"] = [{**asdict(c), "metrics": dict(c.metrics)} for c in self.components]
        return data


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe of `statuses` (healthy when there are none)."""
    return max(statuses, key=_SEVERITY.__getitem__, default="healthy")


# ---------------------------------------------------------------- core checks


def check_database(engine: Engine) -> ComponentHealth:
    ping(engine)  # the first round trip may include opening a connection; measure the second
    latency = round(ping(engine), 3)
    if latency > SLOW_DATABASE_MS:
        return ComponentHealth(
            "database",
            "degraded",
            f"reachable but slow: {latency:.0f} ms per round trip",
            {"latency_ms": latency},
        )
    return ComponentHealth(
        "database", "healthy", f"reachable, {latency:.1f} ms per round trip", {"latency_ms": latency}
    )


def check_migrations(engine: Engine) -> ComponentHealth:
    current = current_revision(engine)
    head = head_revision()
    metrics = {"revision": current, "head": head}
    if current is None:
        return ComponentHealth(
            "migrations", "unhealthy", "schema not created; run `cqrs-console migrate`", metrics
        )
    if current != head:
        return ComponentHealth(
            "migrations",
            "degraded",
            f"at {current}, code expects {head}; run `cqrs-console migrate`",
            metrics,
        )
    return ComponentHealth("migrations", "healthy", f"at head ({current})", metrics)


def check_event_log(engine: Engine) -> ComponentHealth:
    with translate_db_errors():
        if not inspect(engine).has_table("events"):
            return ComponentHealth("event log", "unhealthy", "no events table; run `cqrs-console migrate`")
    store = EventStore(engine)
    count = store.count()
    head = store.head()
    detail = "empty" if count == 0 else f"{count:,} events, head at position {head:,}"
    return ComponentHealth("event log", "healthy", detail, {"event_count": count, "head_position": head})


CORE_CHECKS: tuple[ComponentCheck, ...] = (check_database, check_migrations, check_event_log)


def check_health(engine: Engine, extra_checks: Iterable[ComponentCheck] = ()) -> HealthReport:
    """Run the core checks and then `extra_checks`, in order. When the database cannot be
    reached the other checks are not attempted (each would only repeat the same failure)."""
    components: list[ComponentHealth] = []
    database = _run(check_database, engine, "database")
    components.append(database)
    checks = [*CORE_CHECKS[1:], *extra_checks]
    if database.status == "unhealthy":
        components.extend(
            ComponentHealth(_name_of(check), "unhealthy", "not checked: the database is unreachable")
            for check in checks
        )
    else:
        components.extend(_run(check, engine, _name_of(check)) for check in checks)
    return HealthReport(
        status=worst(c.status for c in components),
        components=components,
        database_latency_ms=_metric(components, "database", "latency_ms"),
        event_count=_metric(components, "event log", "event_count"),
        head_position=_metric(components, "event log", "head_position"),
        migration_revision=_metric(components, "migrations", "revision"),
        checked_at=datetime.now(UTC),
    )


def unreachable_report(detail: str) -> HealthReport:
    """The report when there is no database to check at all (e.g. the embedded server is stopped)."""
    return HealthReport(
        status="unhealthy",
        components=[ComponentHealth("database", "unhealthy", detail)],
        database_latency_ms=None,
        event_count=None,
        head_position=None,
        migration_revision=None,
        checked_at=datetime.now(UTC),
    )


# ---------------------------------------------------------------- schema revision


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with translate_db_errors(), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


# ---------------------------------------------------------------- helpers


def _run(check: ComponentCheck, engine: Engine, name: str) -> ComponentHealth:
    try:
        return check(engine)
    except CQRSError as exc:
        log.debug("health check %s failed", name, exc_info=True)
        return ComponentHealth(name, "unhealthy", exc.user_message)
    except Exception as exc:  # a broken check must not break the report
        log.warning("health check %s raised %s", name, type(exc).__name__, exc_info=True)
        return ComponentHealth(name, "unhealthy", f"check failed ({type(exc).__name__})")


def _name_of(check: ComponentCheck) -> str:
    custom: str | None = getattr(check, "component_name", None)
    fallback: str = getattr(check, "__name__", type(check).__name__)
    name = custom or fallback
    return name.removeprefix("check_").replace("_", " ")


def _metric(components: list[ComponentHealth], name: str, key: str) -> Any:
    for c in components:
        if c.name == name and key in c.metrics:
            return c.metrics[key]
    return None


# ---------------------------------------------------------------- runtime checks


def projections_check(manager: Any, stale_after_seconds: float) -> ComponentCheck:
    """Each projection: faulted → unhealthy; paused, or lagging more than `stale_after_seconds`
    → degraded."""

    def check_projections(_engine: Engine) -> ComponentHealth:
        statuses = manager.status()
        problems: list[str] = []
        status: Status = "healthy"
        for s in statuses:
            if s.state == "faulted":
                problems.append(f"{s.name} faulted")
                status = worst([status, "unhealthy"])
            elif s.state == "paused":
                problems.append(f"{s.name} paused")
                status = worst([status, "degraded"])
            elif s.lag_seconds > stale_after_seconds:
                problems.append(f"{s.name} {s.lag_seconds:.0f} s behind")
                status = worst([status, "degraded"])
        worst_lag = max((s.lag_seconds for s in statuses), default=0.0)
        detail = (
            "; ".join(problems) if problems else f"{len(statuses)} up to date (max lag {worst_lag:.1f} s)"
        )
        return ComponentHealth("projections", status, detail, {"max_lag_seconds": worst_lag})

    return check_projections


class SharedStatus:
    """`manager.status()` read at most once per `max_age_seconds` (thread-safe), so the
    projections line and the scheduler line of one report share one read."""

    def __init__(self, manager: Any, max_age_seconds: float = SHARED_STATUS_SECONDS) -> None:
        self.manager = manager
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._last: tuple[float, list[Any]] | None = None

    def status(self) -> list[Any]:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] > self.max_age_seconds:
                self._last = (now, self.manager.status())
            return self._last[1]


def scheduler_check(
    runtime: Any,
    projections_in: str = "app",
    supervised_worker: Callable[[], Any] | None = None,
    manager: Any = None,
) -> ComponentCheck:
    """Where the projections and their jobs run, as this process sees it: in this process
    (`runtime`, CQRS_PROJECTIONS_IN=app; stopped is unhealthy), in the worker `cqrs-console
    serve` supervises next to it (`supervised_worker()` returns it: its `pid`, None while it is
    being started again, and `last_exit`), or none in this process. `manager.status()` says
    which processes hold the projections now (their heartbeat owners, host:pid)."""

    def owners() -> list[str]:
        if manager is None:
            return []
        return sorted({s.owner for s in manager.status() if s.owner})

    def check_scheduler(_engine: Engine) -> ComponentHealth:
        if runtime is not None:
            if runtime.running:
                return ComponentHealth("scheduler", "healthy", f"running in this process (pid {os.getpid()})")
            return ComponentHealth(
                "scheduler", "unhealthy", "stopped; restart the app or run `cqrs-console worker`"
            )
        worker = supervised_worker() if supervised_worker is not None else None
        if worker is not None:
            pid = worker.pid
            if pid is None:
                exited = getattr(worker, "last_exit", None)
                detail = (
                    f"the supervised projection worker stopped ({exited}) and is being started again"
                    if exited
                    else "the supervised projection worker is starting"
                )
                return ComponentHealth("scheduler", "degraded", detail)
            holders = owners()
            if f"{socket.gethostname()}:{pid}" in holders:
                detail = f"in the supervised worker (pid {pid})"
            elif holders:
                detail = (
                    f"the supervised worker (pid {pid}) stands by; projections run in {', '.join(holders)}"
                )
            else:
                detail = f"in the supervised worker (pid {pid}), starting"
            return ComponentHealth("scheduler", "healthy", detail, {"worker_pid": pid})
        holders = owners()
        elsewhere = f"; projections run in {', '.join(holders)}" if holders else "; no process runs them now"
        return ComponentHealth(
            "scheduler", "healthy", f"none in this process (CQRS_PROJECTIONS_IN={projections_in}){elsewhere}"
        )

    return check_scheduler


def views_check(manager: Any, max_age_seconds: float) -> ComponentCheck:
    """Materialized views refreshed within `max_age_seconds` (never refreshed → degraded)."""

    def check_view_freshness(_engine: Engine) -> ComponentHealth:
        now = datetime.now(UTC)
        views = manager.view_freshness()
        stale = [
            v.view_name
            for v in views
            if v.refreshed_at is not None and (now - v.refreshed_at).total_seconds() > max_age_seconds
        ]
        pending = [v.view_name for v in views if v.refreshed_at is None]
        if stale:
            return ComponentHealth("view freshness", "degraded", f"stale: {', '.join(stale)}")
        if pending:  # created with data by the migration; the scheduler's first refresh is due
            return ComponentHealth(
                "view freshness", "healthy", f"first refresh pending: {', '.join(pending)}"
            )
        return ComponentHealth("view freshness", "healthy", "all statistics views fresh")

    return check_view_freshness


def replica_check(replica: Any) -> ComponentCheck:
    """The read replica (`cqrs_core.read.replica.ReadReplica`): reachable and within
    CQRS_READ_REPLICA_MAX_LAG_SECONDS → healthy (degraded while its replay is paused); too far
    behind or unreachable → degraded when queries fall back to the primary, unhealthy when they
    are refused. The metrics carry the lag in bytes and seconds."""

    def check_read_replica(_engine: Engine) -> ComponentHealth:
        state = replica.state()
        metrics = {
            "lag_bytes": state.lag_bytes,
            "lag_seconds": None if state.lag_seconds is None else round(state.lag_seconds, 3),
            "replay_paused": state.replay_paused,
            "reading_from": replica.reading_from,
        }
        status: Status = "healthy"
        if not state.within(replica.max_lag_seconds):
            status = "degraded" if replica.fallback == "primary" else "unhealthy"
        elif state.replay_paused:
            status = "degraded"
        return ComponentHealth("read replica", status, replica.describe(state), metrics)

    return check_read_replica
