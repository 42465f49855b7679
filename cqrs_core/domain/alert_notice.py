"""What one change of an alert's state tells the outside world (webhooks, logs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class AlertNotice:
    """One change of one alert: raised, acknowledged, snoozed or resolved, or an action the
    evaluator took about it (`action`, e.g. "auto_restart"; its state is then unchanged)."""

    alert_id: str
    rule: str
    severity: str  # "warning" or "critical"
    subject: str  # what the alert is about, e.g. a projection name
    state: str  # "raised", "acknowledged", "snoozed" or "resolved"
    step: int  # the alert stream's version after this change: unique per alert and change
    summary: str  # one human sentence
    actor: str
    occurred_at: datetime
    action: str | None = None  # set when this change is an action, not a change of state
