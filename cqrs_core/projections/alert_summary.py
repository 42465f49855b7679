"""`alert_summary`: one row per alert (its rule, subject, severity, state, when it was raised,
who acknowledged it and when, until when it is snoozed, when it was resolved and by whom, and
the latest step's reason) for the Alerts page, the Overview's banner and the open-alerts gauge."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from cqrs_core.domain.events import (
    ALERT_EVENTS,
    AlertAcknowledged,
    AlertActionTaken,
    AlertRaised,
    AlertResolved,
    AlertSnoozed,
    AlertSnoozeEnded,
    DomainEvent,
    alert_id_of,
    is_alert_stream,
)
from cqrs_core.eventlog.reader import LoggedEvent
from cqrs_core.projections.base import Projection, ProjectionError, domain_event, event_types
from cqrs_core.projections.rows import load_rows_by_text_key
from cqrs_core.read.tables import ALERT_SUMMARY, ALERT_SUMMARY_TABLE, upsert_rows

HANDLED = event_types(*ALERT_EVENTS)


def alert_key(event: LoggedEvent) -> str:
    """The alert id of an event's stream as canonical text."""
    if not is_alert_stream(event.stream_id):
        raise ProjectionError(f"event at position {event.position} is not in an alert stream")
    try:
        return str(uuid.UUID(alert_id_of(event.stream_id)))
    except ValueError:
        raise ProjectionError(f"stream {event.stream_id[:80]!r} does not name an alert id") from None


class AlertSummaryProjection(Projection):
    name = ALERT_SUMMARY
    tables = (ALERT_SUMMARY_TABLE,)
    # Each row stands alone: an event it cannot apply is parked and the other alerts go on.
    default_failure_policy = "skip"
    handled_types = HANDLED

    def apply(self, conn: Connection, events: Sequence[LoggedEvent], tables: Mapping[str, str]) -> None:
        table = tables[ALERT_SUMMARY]
        relevant = [(alert_key(e), e, domain_event(e)) for e in events if e.event_type in HANDLED]
        if not relevant:
            return
        # An alert raised in this batch needs no lookup: its fold starts from the raise.
        raised_here = {key for key, _, ev in relevant if isinstance(ev, AlertRaised)}
        wanted = sorted({(key,) for key, _, _ in relevant if key not in raised_here})
        rows: dict[str, dict[str, Any]] = {
            r["alert_id"]: r for r in load_rows_by_text_key(conn, ALERT_SUMMARY_TABLE, table, wanted)
        }
        changed: dict[str, None] = {}
        row: dict[str, Any] | None
        for key, event, ev in relevant:
            if isinstance(ev, AlertRaised):
                rows[key] = row = self._raised(key, event, ev)
            else:
                row = rows.get(key)
                if row is None:
                    raise ProjectionError(
                        f"{event.event_type} at position {event.position}: alert {key} was never raised"
                    )
                self._fold(row, event, ev)
            row["last_actor"], row["updated_at"], row["version"] = (
                event.actor,
                event.occurred_at,
                event.version,
            )
            changed[key] = None
        upsert_rows(conn, ALERT_SUMMARY_TABLE, table, [rows[k] for k in changed])

    @staticmethod
    def _raised(key: str, event: LoggedEvent, ev: AlertRaised) -> dict[str, Any]:
        return {
            "alert_id": key,
            "rule": ev.rule,
            "subject": ev.subject,
            "severity": ev.severity,
            "state": "raised",
            "summary": ev.summary,
            "raised_at": event.occurred_at,
            "acknowledged_by": None,
            "acknowledged_at": None,
            "snoozed_until": None,
            "snoozed_by": None,
            "resolved_at": None,
            "resolved_by": None,
            "last_reason": ev.summary,
        }

    @staticmethod
    def _fold(row: dict[str, Any], event: LoggedEvent, ev: DomainEvent) -> None:
        match ev:
            case AlertAcknowledged(reason=reason):
                row.update(
                    state="acknowledged",
                    acknowledged_by=event.actor,
                    acknowledged_at=event.occurred_at,
                    snoozed_until=None,
                    last_reason=reason,
                )
            case AlertSnoozed(until=until, reason=reason):
                row.update(state="snoozed", snoozed_until=until, snoozed_by=event.actor, last_reason=reason)
            case AlertSnoozeEnded(reason=reason):
                row.update(state="raised", snoozed_until=None, last_reason=reason)
            case AlertActionTaken(reason=reason):
                row.update(last_reason=reason)
            case AlertResolved(reason=reason):
                row.update(
                    state="resolved",
                    snoozed_until=None,
                    resolved_at=event.occurred_at,
                    resolved_by=event.actor,
                    last_reason=reason,
                )
