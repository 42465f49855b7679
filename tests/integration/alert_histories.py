"""Builds alert histories in the event store for the read-side tests, by appending the alert
events directly (EventStore.append with expected versions), one step at a time."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from workflow_histories import T0

from cqrs_core.domain import events as ev
from cqrs_core.eventlog.store import EventMetadata, EventStore, NewEvent


class AlertHistory:
    """One alert's stream; every step is taken `minutes` after the previous one."""

    def __init__(self, store: EventStore, start: datetime = T0) -> None:
        self.store = store
        self.alert_id = str(uuid.uuid4())
        self.version = 0
        self.clock = start

    @property
    def stream_id(self) -> str:
        return ev.alert_stream_id(self.alert_id)

    def step(self, event: ev.DomainEvent, actor: str = "alerts", minutes: float = 5) -> None:
        self.clock += timedelta(minutes=minutes)
        self.store.append(
            self.stream_id,
            self.version,
            [NewEvent(event.event_type, event.to_payload(), event.schema_version)],
            EventMetadata(actor=actor, occurred_at=self.clock, correlation_id=uuid.UUID(self.alert_id)),
        )
        self.version += 1

    def raised(self, rule="projection_lag", subject="task_summary", severity="warning", summary="behind"):
        self.step(ev.AlertRaised(rule=rule, subject=subject, severity=severity, summary=summary), minutes=0)
        return self

    def acknowledged(self, actor="olga", reason="looking at it"):
        self.step(ev.AlertAcknowledged(reason=reason), actor=actor)
        return self

    def snoozed(self, actor="olga", reason="deploying a fix", hours: float = 1):
        self.step(ev.AlertSnoozed(until=self.clock + timedelta(hours=hours), reason=reason), actor=actor)
        return self

    def resolved(self, reason="Cleared", automatic=True, actor="alerts"):
        self.step(ev.AlertResolved(reason=reason, automatic=automatic), actor=actor)
        return self
