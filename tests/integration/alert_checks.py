"""What the alert tests share: an evaluator wired as the service wires it (its own clock, so a
hold can be waited out without waiting, and a list its notices go to), and reading what the log
says about the alerts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from cqrs_core import CQRSServiceBuilder
from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.infra.config import load_settings
from cqrs_core.ops.alerts.evaluator import AlertEvaluator
from cqrs_core.ops.alerts.facts import FactGatherer
from cqrs_core.projections.engine.runtime import JobHistory
from cqrs_core.service import CQRSService


class Clock:
    """The evaluator's clock: now, moved on by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Watch:
    """A service, its alert evaluator and what the evaluator told."""

    service: CQRSService
    evaluator: AlertEvaluator
    clock: Clock
    history: JobHistory
    notices: list[AlertNotice] = field(default_factory=list)

    @property
    def engine(self) -> Engine:
        return self.service.engine

    def evaluate(self, times: int = 1) -> None:
        for _ in range(times):
            self.evaluator.evaluate()

    def close(self) -> None:
        self.evaluator.close()
        self.service.projections.close()
        self.service.close()


def watch(
    db_url: str, *, notify: Any = None, rules: Any = None, remedies: Any = None, **settings: Any
) -> Watch:
    notices: list[AlertNotice] = []
    service = (
        CQRSServiceBuilder(load_settings(**settings))
        .with_database_url(db_url)
        .with_migrations(False)
        .with_rate_limit(1e6, 10**6)
        .with_alert_notify(notify or notices.append)
        .build()
    )
    history, clock = JobHistory(), Clock()
    chosen = {} if rules is None else {"rules": rules}
    gatherer = FactGatherer(service.engine, service.projections, service.settings, history, **chosen)
    evaluator = AlertEvaluator(
        service.engine,
        service.settings,
        service.command_bus,
        gatherer,
        notify=notify or notices.append,
        clock=clock,
        remedies=remedies,
        **chosen,
    )
    return Watch(service, evaluator, clock, history, notices)


def alert_steps(engine: Engine, rule: str | None = None) -> dict[tuple[str, str], list[list[str]]]:
    """Per (rule, subject): each of its alerts' event types in order, oldest alert first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """SELECT r.payload->>'rule' AS rule, r.payload->>'subject' AS subject, e.stream_id,
                          array_agg(e.event_type ORDER BY e.version) AS steps, min(e.position) AS first
                   FROM events e JOIN events r ON r.stream_id = e.stream_id AND r.event_type = 'AlertRaised'
                   WHERE e.stream_id LIKE 'alert-%'
                   GROUP BY 1, 2, 3 ORDER BY first"""
            )
        ).all()
    found: dict[tuple[str, str], list[list[str]]] = {}
    for r in rows:
        if rule is None or r.rule == rule:
            found.setdefault((r.rule, r.subject), []).append(list(r.steps))
    return found


def alert_events(engine: Engine, alert_id: str | uuid.UUID) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT version, event_type, payload, actor, occurred_at, correlation_id, command_id FROM events"
                " WHERE stream_id = :s ORDER BY version"
            ),
            {"s": f"alert-{alert_id}"},
        ).all()
