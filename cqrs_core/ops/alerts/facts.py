"""The one gatherer of the facts the alert rules look at: a probe query's round trip, each
projection's status and how long its checkpoint has not moved, each statistics view's age, the
missed runs of the evaluating process's scheduler, and what the rules with a `gather` of their
own report. Whatever cannot be read is None in the snapshot (never an exception): the rules that
need it then leave their alerts alone."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import CQRSError, TimeoutError_
from cqrs_core.ops.alerts.rules import (
    RULES,
    Condition,
    DatabaseFacts,
    Facts,
    ProjectionFacts,
    Rule,
    ViewFacts,
)
from cqrs_core.projections.engine.failures import describe_error
from cqrs_core.projections.engine.runtime import JobHistory

log = logging.getLogger(__name__)

# The probe query gives up after this many times the slow threshold (at least PROBE_MIN_MS): a
# database that answers that late counts as slow, with the timeout as its time.
PROBE_TIMEOUT_FACTOR = 4
PROBE_MIN_MS = 1000

_IDLE_SQL = text(
    "SELECT name, extract(epoch FROM clock_timestamp() - updated_at)::float8 AS idle"
    " FROM projection_checkpoints WHERE name = ANY(CAST(:names AS text[]))"
)


class FactGatherer:
    """Reads one `Facts` snapshot. `manager` is the process's ProjectionManager, `history` the
    JobHistory of its scheduler (None: no scheduler here, so no missed runs to tell)."""

    def __init__(
        self,
        engine: Engine,
        manager: Any,
        settings: Settings,
        history: JobHistory | None = None,
        rules: Mapping[str, Rule] = RULES,
    ) -> None:
        self.engine, self.manager, self.settings, self.history = engine, manager, settings, history
        self.fed = {name: rule.gather for name, rule in rules.items() if rule.gather is not None}

    def gather(self, at: datetime) -> Facts:
        database = self.probe()
        missed = self.history.missed_runs() if self.history is not None else None
        if not database.reachable:
            return Facts(at, database, missed_runs=missed)
        return Facts(
            at,
            database,
            projections=self._read("projections", self._projections),
            views=self._read("views", self._views),
            missed_runs=missed,
            reported=self._reported(),
        )

    def probe(self) -> DatabaseFacts:
        """`SELECT 1` on a pooled connection, timed once the connection is open."""
        timeout_ms = int(max(PROBE_MIN_MS, PROBE_TIMEOUT_FACTOR * self.settings.alert_database_slow_ms))
        try:
            with translate_db_errors(), self.engine.connect() as conn, conn.begin():
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout_ms}")
                started = time.perf_counter()
                conn.exec_driver_sql("SELECT 1")
                return DatabaseFacts(True, round((time.perf_counter() - started) * 1000, 3))
        except TimeoutError_:
            return DatabaseFacts(True, float(timeout_ms))
        except CQRSError as exc:
            cause = exc.__cause__
            detail = describe_error(cause) if isinstance(cause, DBAPIError) else exc.user_message
            return DatabaseFacts(False, error=_first_clause(detail))
        except Exception as exc:  # the pool itself failed: no database either
            return DatabaseFacts(False, error=_first_clause(describe_error(exc)))

    def _read(self, what: str, read: Any) -> Any:
        try:
            return read()
        except Exception as exc:
            log.warning("alert facts: could not read the %s: %s", what, getattr(exc, "user_message", exc))
            return None

    def _projections(self) -> tuple[ProjectionFacts, ...]:
        statuses = self.manager.status()
        with translate_db_errors(), self.engine.connect() as conn:
            idle = {
                r.name: float(r.idle) for r in conn.execute(_IDLE_SQL, {"names": [s.name for s in statuses]})
            }
        return tuple(
            ProjectionFacts(
                name=s.name,
                state=s.state,
                desired_state=s.desired_state,
                position=s.position,
                head=s.head,
                lag_events=s.lag_events,
                lag_seconds=s.lag_seconds,
                parked=s.parked,
                idle_seconds=max(0.0, idle.get(s.name, 0.0)),
                last_error=s.last_error,
            )
            for s in statuses
        )

    def _views(self) -> tuple[ViewFacts, ...]:
        with translate_db_errors(), self.engine.connect() as conn:
            now = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
        return tuple(
            ViewFacts(v.view_name, None if v.refreshed_at is None else (now - v.refreshed_at).total_seconds())
            for v in self.manager.view_freshness()
        )

    def _reported(self) -> dict[str, tuple[Condition, ...]]:
        found: dict[str, tuple[Condition, ...]] = {}
        for name, gather in self.fed.items():
            try:
                with translate_db_errors():
                    found[name] = tuple(gather(self.engine))
            except Exception as exc:  # that rule's alerts stay as they are; the others go on
                log.warning(
                    "alert facts: rule %s could not gather: %s", name, getattr(exc, "user_message", exc)
                )
        return found


def _first_clause(detail: str) -> str:
    """The error type and what failed: a driver's connection error also names the host, port or
    socket it tried, which people reading an alert do not need."""
    kind, _, message = detail.partition(": ")
    return f"{kind}: {message.rsplit(': ', 1)[-1].strip()}" if message else kind
