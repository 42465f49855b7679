"""The Alert aggregate: one alert's lifecycle, rebuilt from its stream (`alert-<uuid>`).

raised → acknowledged → resolved, with snoozed-until on the way: an open alert (raised,
acknowledged or snoozed) can be snoozed until a moment, which keeps it open but silent; when the
snooze runs out while the alert is still open, the evaluator ends it and the alert is raised again
(announced once more). Every step names who took it (the event's actor) and why (its reason).

As with the workflow, deciding never mutates: each method returns the events to append and
`apply` folds them. Which steps each state allows is one table (`ALERT_ACTION_STATES`): the
aggregate enforces it and pages ask `allowed_alert_actions` which buttons to offer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cqrs_core.domain import events as ev
from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.domain.vocabulary import ALERT_SEVERITIES, OPEN_ALERT_STATES
from cqrs_core.infra.errors import CorruptStreamError, DomainRuleViolation

AlertAction = Literal["acknowledge", "snooze", "end_snooze", "resolve"]

# The states in which each step may be taken (raising is only for an alert that does not exist).
ALERT_ACTION_STATES: dict[AlertAction, frozenset[str]] = {
    "acknowledge": frozenset({"raised", "snoozed"}),
    "snooze": OPEN_ALERT_STATES,  # snoozing a snoozed alert again moves its end
    "end_snooze": frozenset({"snoozed"}),
    "resolve": OPEN_ALERT_STATES,
}
# A snooze is a pause, not a way to switch an alert off: at most this long.
MAX_SNOOZE = timedelta(days=7)
# Text an alert carries (a subject, a summary) is cut to this many characters.
MAX_ALERT_TEXT = 1000


def allowed_alert_actions(state: str | None) -> frozenset[AlertAction]:
    """The steps an alert in `state` allows (none once resolved)."""
    return frozenset(a for a, states in ALERT_ACTION_STATES.items() if state in states)


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ALERT_TEXT else text[: MAX_ALERT_TEXT - 1] + "…"


@dataclass
class Alert:
    alert_id: str
    version: int = 0
    state: str | None = None  # None until raised
    rule: str = ""
    subject: str = ""
    severity: str = "warning"
    summary: str = ""
    snoozed_until: datetime | None = None
    last_reason: str | None = None  # why the latest step was taken
    last_action: str | None = None  # the evaluator's action, when the latest step is one

    # ------------------------------------------------------------ state

    @property
    def exists(self) -> bool:
        return self.state is not None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_ALERT_STATES

    def snooze_over(self, now: datetime) -> bool:
        """Whether a snoozed alert's snooze has run out at `now`."""
        return self.state == "snoozed" and self.snoozed_until is not None and self.snoozed_until <= now

    def apply(self, event: ev.DomainEvent) -> None:
        self.last_action = None
        match event:
            case ev.AlertRaised():
                self.state = "raised"
                self.rule, self.subject, self.severity = event.rule, event.subject, event.severity
                self.summary, self.last_reason = event.summary, event.summary
            case ev.AlertAcknowledged():
                self.state, self.snoozed_until, self.last_reason = "acknowledged", None, event.reason
            case ev.AlertSnoozed():
                self.state, self.snoozed_until, self.last_reason = "snoozed", event.until, event.reason
            case ev.AlertSnoozeEnded():
                self.state, self.snoozed_until, self.last_reason = "raised", None, event.reason
            case ev.AlertResolved():
                self.state, self.snoozed_until, self.last_reason = "resolved", None, event.reason
            case ev.AlertActionTaken():
                # the state stays: acting on the condition is not resolving it
                self.last_reason, self.last_action = event.reason, event.action
            case _:
                raise ValueError(f"{event.event_type} is not an alert event")
        self.version += 1

    @classmethod
    def from_stored(cls, alert_id: str, rows: Iterable[Any]) -> Alert:
        """The alert folded from its stored rows (version, event_type, schema_version, payload),
        upcast and validated; a stream that does not read as an alert's history (an unknown event,
        a gap, a step its state does not allow) is a CorruptStreamError naming the event."""
        alert = cls(alert_id)
        stream_id = ev.alert_stream_id(alert_id)
        for row in rows:
            if row.version != alert.version + 1:
                raise CorruptStreamError(
                    f"Alert stream {stream_id} jumps from version {alert.version} to {row.version}; an operator "
                    "must repair it before the alert can change.",
                    stream_id=stream_id,
                )
            event = ev.event_from_payload(
                row.event_type,
                row.payload,
                stream_id=stream_id,
                version=row.version,
                schema_version=row.schema_version,
            )
            try:
                alert.apply(event)
            except ValueError as exc:
                raise CorruptStreamError(
                    f"The stored {row.event_type[:80]} event at version {row.version} of stream {stream_id} "
                    "is not an alert's; an operator must repair the stream before the alert can change.",
                    stream_id=stream_id,
                    problem=str(exc)[:200],
                ) from None
        return alert

    # ------------------------------------------------------------ deciding

    def raise_(self, *, rule: str, subject: str, severity: str, summary: str) -> list[ev.DomainEvent]:
        if self.exists:
            raise DomainRuleViolation("This alert was raised already; each raise is a new alert.")
        if severity not in ALERT_SEVERITIES:
            raise DomainRuleViolation(f"Severity must be one of {', '.join(ALERT_SEVERITIES)}.")
        return [ev.AlertRaised(rule=rule, subject=_clip(subject), severity=severity, summary=_clip(summary))]  # type: ignore[arg-type]

    def acknowledge(self, reason: str) -> list[ev.DomainEvent]:
        self._require("acknowledge")
        return [ev.AlertAcknowledged(reason=reason)]

    def snooze(self, until: datetime, reason: str, now: datetime) -> list[ev.DomainEvent]:
        self._require("snooze")
        if until <= now:
            raise DomainRuleViolation("A snooze must end in the future; pick a later time.")
        if until - now > MAX_SNOOZE:
            raise DomainRuleViolation(
                f"A snooze lasts at most {MAX_SNOOZE.days} days; acknowledge the alert if someone is on it."
            )
        return [ev.AlertSnoozed(until=until, reason=reason)]

    def end_snooze(self, reason: str, now: datetime) -> list[ev.DomainEvent]:
        self._require("end_snooze")
        if not self.snooze_over(now):
            raise DomainRuleViolation("This alert's snooze has not run out yet.")
        return [ev.AlertSnoozeEnded(reason=reason)]

    def resolve(self, reason: str, *, automatic: bool = False) -> list[ev.DomainEvent]:
        self._require("resolve")
        return [ev.AlertResolved(reason=reason, automatic=automatic)]

    def record_action(self, action: str, reason: str) -> list[ev.DomainEvent]:
        """The evaluator acted on an open alert's condition (not a step people take: no button)."""
        if not self.exists:
            raise DomainRuleViolation(f"Alert {self.alert_id} was never raised.")
        if not self.is_open:
            raise DomainRuleViolation(f"This alert is {self.state}: nothing is done about a closed alert.")
        return [ev.AlertActionTaken(action=action, reason=_clip(reason))]

    def _require(self, action: AlertAction) -> None:
        if not self.exists:
            raise DomainRuleViolation(f"Alert {self.alert_id} was never raised.")
        if self.state not in ALERT_ACTION_STATES[action]:
            raise DomainRuleViolation(
                f"This alert is {self.state}, so it cannot be {_DONE[action]}; reload to see where it stands."
            )

    # ------------------------------------------------------------ telling the outside world

    def notice(self, actor: str, occurred_at: datetime) -> AlertNotice:
        """What the latest folded step tells the outside world (webhooks, logs)."""
        state = self.state or "raised"
        return AlertNotice(
            alert_id=self.alert_id,
            rule=self.rule,
            severity=self.severity,
            subject=self.subject,
            state=state,
            step=self.version,
            summary=_sentence(self, actor, acted=self.last_action is not None),
            actor=actor,
            occurred_at=occurred_at,
            action=self.last_action,
        )


_DONE: dict[AlertAction, str] = {
    "acknowledge": "acknowledged",
    "snooze": "snoozed",
    "end_snooze": "woken from a snooze",
    "resolve": "resolved",
}


def _sentence(alert: Alert, actor: str, acted: bool = False) -> str:
    reason = alert.last_reason or ""
    if acted:
        return f"{actor} acted on {alert.rule} on {alert.subject}: {reason}"
    match alert.state:
        case "acknowledged":
            return f"{actor} acknowledged {alert.rule} on {alert.subject}: {reason}"
        case "snoozed":
            until = alert.snoozed_until.isoformat(timespec="minutes") if alert.snoozed_until else "?"
            return f"{actor} snoozed {alert.rule} on {alert.subject} until {until}: {reason}"
        case "resolved":
            return f"{alert.rule} on {alert.subject} resolved: {reason}"
        case _ if alert.version > 1:  # raised again after a snooze
            return f"{alert.rule} on {alert.subject} still holds after its snooze: {alert.summary}"
    return alert.summary
