"""Alert notifications and how their delivery went (`alert_deliveries`, written by the notifier in
`ops/webhooks`), for the Alerts page: the newest first, and how many ended in each status lately."""

from __future__ import annotations

from typing import Any

from cqrs_core.domain.vocabulary import ALERT_DELIVERY_STATUSES
from cqrs_core.read import queries as q
from cqrs_core.read.results import AlertDeliveries
from cqrs_core.read.sql import SqlReader

COLUMNS = (
    "alert_id, step, rule, severity, subject, alert_state, summary, occurred_at, url, status, attempts, "
    "last_error, last_attempt_at, next_attempt_at, delivered_at, updated_at"
)


def alert_deliveries(reader: SqlReader, query: q.GetAlertDeliveries) -> AlertDeliveries:
    params: dict[str, Any] = {"limit": query.limit, "hours": query.hours}
    where = ""
    if query.status:
        where = "WHERE status = ANY(%(status)s)"
        params["status"] = list(query.status)
    rows = reader.rows(
        f"SELECT {COLUMNS} FROM alert_deliveries {where} ORDER BY updated_at DESC, alert_id, step "
        "LIMIT %(limit)s",
        params,
    )
    _, counted = reader.execute(
        "SELECT status, count(*) FROM alert_deliveries "
        "WHERE updated_at >= now() - make_interval(hours => %(hours)s) GROUP BY status",
        {"hours": query.hours},
    )
    counts = dict.fromkeys(ALERT_DELIVERY_STATUSES, 0) | {status: int(n) for status, n in counted}
    return AlertDeliveries(rows, counts)
