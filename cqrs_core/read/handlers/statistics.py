"""Statistics (the materialized views and their refresh times) and the overview's KPIs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cqrs_core.domain.vocabulary import OPEN_WORKFLOW_STATUSES
from cqrs_core.eventlog.cursors import HEAD_SQL
from cqrs_core.read import queries as q
from cqrs_core.read.results import Overview, Statistics
from cqrs_core.read.sql import SqlReader, rows_from_json, single_statement

_RECENT_JSON: list[tuple[str, Callable[..., Any]]] = [
    ("occurred_at", datetime.fromisoformat),
    ("workflow_id", uuid.UUID),
]


def statistics(reader: SqlReader, query: q.GetStatistics) -> Statistics:
    where, params = [], {}
    if query.date_from:
        where.append("day >= %(f)s")
        params["f"] = query.date_from
    if query.date_to:
        where.append("day <= %(t)s")
        params["t"] = query.date_to
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    refreshed = {r["view_name"]: r for r in reader.rows("SELECT * FROM view_refreshes")}
    return Statistics(
        daily_throughput=reader.rows(f"SELECT * FROM stats_daily_throughput {clause} ORDER BY day", params),
        methodology_outcomes=reader.rows("SELECT * FROM stats_methodology_outcomes ORDER BY methodology"),
        task_kinds=reader.rows("SELECT * FROM stats_task_kind ORDER BY kind"),
        assignee_load=reader.rows(
            "SELECT * FROM stats_assignee_load ORDER BY open_tasks DESC, total_tasks DESC, assignee"
        ),
        refreshed=refreshed,
    )


@single_statement
def overview(reader: SqlReader, query: q.GetOverview) -> Overview:
    """One clock for both "today" and the recent activity: when an event happened
    (`occurred_at`, as the activity list shows it), "today" from midnight in `query.time_zone`.
    Active tasks are the running tasks of open workflows (a workflow that ended before its tasks
    were closed with it, in an old log not yet rebuilt, counts none)."""
    names, rows = reader.execute(
        f"""SELECT {reader.cursors_sql} AS cursors,
                   (SELECT json_object_agg(status, json_build_array(n, running) ORDER BY status)
                    FROM (SELECT status, count(*) AS n, COALESCE(sum(task_running), 0) AS running
                          FROM workflow_summary GROUP BY status) AS s) AS by_status,
                   (SELECT count(*) FROM workflow_activity
                    WHERE occurred_at >= date_trunc('day', now() AT TIME ZONE %(tz)s) AT TIME ZONE %(tz)s
                   ) AS today,
                   ({HEAD_SQL}) AS total_events,
                   (SELECT json_agg(r ORDER BY r.occurred_at DESC, r.position DESC) FROM (
                        SELECT a.position, a.occurred_at, a.actor, a.event_type, a.summary, a.workflow_id, w.title
                        FROM workflow_activity a LEFT JOIN workflow_summary w USING (workflow_id)
                        ORDER BY a.occurred_at DESC, a.position DESC LIMIT %(n)s) AS r) AS recent""",
        {"n": query.recent, "tz": query.time_zone},
    )
    cursors, by_status, today, total_events, recent = rows[0]
    reader.take_cursors(cursors)
    by_status = by_status or {}
    counts = {status: int(n) for status, (n, _running) in by_status.items()}
    active = sum(
        int(running) for status, (_n, running) in by_status.items() if status in OPEN_WORKFLOW_STATUSES
    )
    finished = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
    return Overview(
        workflows_total=sum(counts.values()),
        status_counts=counts,
        completion_rate=(counts.get("completed", 0) / finished) if finished else None,
        active_tasks=active,
        events_today=int(today),
        events_total=int(total_events),
        recent_activity=rows_from_json(recent, _RECENT_JSON) if query.recent else [],
    )
