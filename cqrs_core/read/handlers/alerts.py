"""Alerts: the open and recent ones (`alert_summary`) and one alert's steps (its stream in the
event log, each step decoded through the schema registry like every reader of the log)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from cqrs_core.domain.events import (
    AlertAcknowledged,
    AlertActionTaken,
    AlertRaised,
    AlertResolved,
    AlertSnoozed,
    AlertSnoozeEnded,
    alert_stream_id,
    event_from_payload,
)
from cqrs_core.infra.errors import NotFoundError
from cqrs_core.read import queries as q
from cqrs_core.read.results import AlertHistory, AlertList
from cqrs_core.read.sql import SqlReader

COLUMNS = (
    "alert_id::text AS alert_id, rule, subject, severity, state, summary, raised_at, acknowledged_by, "
    "acknowledged_at, snoozed_until, snoozed_by, resolved_at, resolved_by, last_reason, last_actor, "
    "updated_at, version"
)
STEPS = {
    AlertRaised: "raised",
    AlertAcknowledged: "acknowledged",
    AlertSnoozed: "snoozed",
    AlertSnoozeEnded: "snooze ended",
    AlertResolved: "resolved",
}


def alert_list(reader: SqlReader, query: q.GetAlerts) -> AlertList:
    def rows(sql: str, limit: int) -> list[dict[str, Any]]:
        if limit == 0:
            return []
        names, found = reader.execute(sql, {"limit": limit})
        return [dict(zip(names, r, strict=True)) for r in found]

    return AlertList(
        open=rows(
            f"SELECT {COLUMNS} FROM alert_summary WHERE state <> 'resolved'"
            " ORDER BY severity = 'critical' DESC, raised_at DESC, alert_id LIMIT %(limit)s",
            query.open_limit,
        ),
        recent=rows(
            f"SELECT {COLUMNS} FROM alert_summary WHERE state = 'resolved'"
            " ORDER BY resolved_at DESC, alert_id LIMIT %(limit)s",
            query.recent,
        ),
    )


def alert_history(reader: SqlReader, query: q.GetAlertHistory) -> AlertHistory:
    alert_id = str(query.alert_id)
    stream_id = alert_stream_id(alert_id)
    names, found = reader.execute(
        "SELECT version, event_type, schema_version, payload, actor, occurred_at FROM events"
        " WHERE stream_id = %(s)s ORDER BY version",
        {"s": stream_id},
    )
    if not found:
        raise NotFoundError(f"There is no alert {alert_id}.")
    steps = []
    for row in found:
        r = dict(zip(names, row, strict=True))
        ev = event_from_payload(
            r["event_type"],
            r["payload"],
            stream_id=stream_id,
            version=r["version"],
            schema_version=r["schema_version"],
        )
        steps.append(
            {
                "version": r["version"],
                # an action is named by what was done: "auto-restart"
                "step": ev.action.replace("_", "-")
                if isinstance(ev, AlertActionTaken)
                else STEPS.get(type(ev), r["event_type"]),
                "actor": r["actor"],
                "occurred_at": r["occurred_at"],
                "why": ev.summary if isinstance(ev, AlertRaised) else getattr(ev, "reason", ""),
                "until": ev.until if isinstance(ev, AlertSnoozed) else None,
                "automatic": bool(getattr(ev, "automatic", False)),
            }
        )
    return AlertHistory(alert_id, steps)


_OPEN_COUNTS = text(
    "SELECT rule, severity, count(*) AS n FROM alert_summary WHERE state <> 'resolved' GROUP BY 1, 2"
)


def open_alert_counts(conn: Connection) -> dict[tuple[str, str], int]:
    """Open alerts by (rule, severity), from the read model (the metrics' gauge)."""
    return {(r.rule, r.severity): int(r.n) for r in conn.execute(_OPEN_COUNTS)}
