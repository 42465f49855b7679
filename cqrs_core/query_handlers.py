"""Query handlers: plain SQL over the read models (never aggregates). Each takes an open
read-only connection and the query, and returns plain data for the pages."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, text

from cqrs_core import queries as q
from cqrs_core.errors import NotFoundError

HIGHLIGHT_START, HIGHLIGHT_STOP = "\ue000", "\ue001"  # private-use marks: no user text can fake them

_LIST_COLUMNS = """workflow_id, title, research_question, methodology, status, priority, owner, tags, due_date,
    created_at, started_at, finished_at, duration_seconds, task_total, task_pending, task_running,
    task_completed, task_failed, task_cancelled, progress_pct, last_activity_at"""

_SORT_SQL = {name: name for name in q.SORT_COLUMNS} | {"priority": "priority_rank"}


def _rows(result) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


@dataclass(frozen=True)
class WorkflowPage:
    items: list[dict[str, Any]]
    total: int
    page: int
    page_size: int

    @property
    def page_count(self) -> int:
        return max(1, math.ceil(self.total / self.page_size))


@dataclass(frozen=True)
class WorkflowDetail:
    workflow: dict[str, Any]
    tasks: list[dict[str, Any]]
    activity: list[dict[str, Any]]


@dataclass(frozen=True)
class Statistics:
    daily_throughput: list[dict[str, Any]]
    methodology_outcomes: list[dict[str, Any]]
    task_kinds: list[dict[str, Any]]
    assignee_load: list[dict[str, Any]]
    refreshed: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Overview:
    workflows_total: int
    status_counts: dict[str, int]
    completion_rate: float | None
    active_tasks: int
    events_today: int
    events_total: int
    recent_activity: list[dict[str, Any]]


@dataclass(frozen=True)
class EventLogPage:
    events: list[dict[str, Any]]
    next_before: int | None = None
    next_after: int | None = None


@dataclass(frozen=True)
class CorrelationTrace:
    correlation_id: str
    commands: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)


def _filters(query: q.WorkflowFilters) -> tuple[list[str], dict[str, Any]]:
    where, params = [], {}
    if query.status:
        where.append("status = ANY(:status)")
        params["status"] = list(query.status)
    if query.methodology:
        where.append("methodology = ANY(:methodology)")
        params["methodology"] = list(query.methodology)
    if query.priority:
        where.append("priority = ANY(:priority)")
        params["priority"] = list(query.priority)
    if query.owner:
        where.append("owner = :owner")
        params["owner"] = query.owner
    if query.tags:
        where.append("tags @> CAST(:tags AS text[])")
        params["tags"] = list(query.tags)
    if query.created_from:
        where.append("created_at >= :created_from")
        params["created_from"] = query.created_from
    if query.created_to:
        where.append("created_at < :created_to")
        params["created_to"] = query.created_to + timedelta(days=1)
    return where, params


def workflow_list(conn: Connection, query: q.GetWorkflowList) -> WorkflowPage:
    where, params = _filters(query)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    direction = "DESC" if query.descending else "ASC"
    column = _SORT_SQL[query.sort]
    params.update(limit=query.page_size, offset=(query.page - 1) * query.page_size)
    items = _rows(conn.execute(text(
        f"SELECT {_LIST_COLUMNS} FROM workflow_summary {clause} "
        f"ORDER BY {column} {direction} NULLS LAST, workflow_id {direction} LIMIT :limit OFFSET :offset"
    ), params))
    total = conn.execute(text(f"SELECT count(*) FROM workflow_summary {clause}"), params).scalar_one()
    return WorkflowPage(items, int(total), query.page, query.page_size)


def search_workflows(conn: Connection, query: q.SearchWorkflows) -> WorkflowPage:
    where, params = _filters(query)
    where.append("search_vector @@ tsq.tsq")
    params.update(text=query.text, limit=query.page_size, offset=(query.page - 1) * query.page_size,
                  opts=f"StartSel={HIGHLIGHT_START}, StopSel={HIGHLIGHT_STOP}, MaxWords=30, MinWords=12, "
                       "MaxFragments=2, FragmentDelimiter=\" … \"")
    clause = " AND ".join(where)
    # Rank on the whole match set, headline only the page (ts_headline is the costly part).
    items = _rows(conn.execute(text(
        f"""
        WITH tsq AS (SELECT websearch_to_tsquery('english', :text) AS tsq),
        hits AS (
            SELECT {_LIST_COLUMNS},
                   ts_rank_cd(search_vector, tsq.tsq)
                     + CASE WHEN lower(title) = lower(:text) THEN 100 ELSE 0 END AS rank,
                   tsq.tsq AS tsq
            FROM workflow_summary, tsq
            WHERE {clause}
            ORDER BY rank DESC, created_at DESC, workflow_id
            LIMIT :limit OFFSET :offset
        )
        SELECT {_LIST_COLUMNS}, rank,
               ts_headline('english', title || ' — ' || research_question, tsq, :opts) AS snippet
        FROM hits ORDER BY rank DESC, created_at DESC, workflow_id
        """
    ), params))
    for item in items:
        item.pop("tsq", None)
    total = conn.execute(text(
        f"""WITH tsq AS (SELECT websearch_to_tsquery('english', :text) AS tsq)
            SELECT count(*) FROM workflow_summary, tsq WHERE {clause}"""
    ), params).scalar_one()
    return WorkflowPage(items, int(total), query.page, query.page_size)


def workflow_detail(conn: Connection, query: q.GetWorkflow) -> WorkflowDetail:
    wid = str(query.workflow_id)
    row = conn.execute(text("SELECT * FROM workflow_summary WHERE workflow_id = :w"), {"w": wid}).first()
    if row is None:
        raise NotFoundError(f"Workflow {wid} was not found (it may still be on its way to the read model).")
    workflow = dict(row._mapping)
    workflow.pop("search_vector", None)
    tasks = _rows(conn.execute(text(
        "SELECT * FROM task_summary WHERE workflow_id = :w ORDER BY created_at, name"), {"w": wid}))
    activity = _rows(conn.execute(text(
        "SELECT position, event_type, actor, occurred_at, task_id, correlation_id, summary "
        "FROM workflow_activity WHERE workflow_id = :w ORDER BY position"), {"w": wid}))
    return WorkflowDetail(workflow, tasks, activity)


def statistics(conn: Connection, query: q.GetStatistics) -> Statistics:
    where, params = [], {}
    if query.date_from:
        where.append("day >= :f")
        params["f"] = query.date_from
    if query.date_to:
        where.append("day <= :t")
        params["t"] = query.date_to
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    refreshed = {r["view_name"]: r for r in _rows(conn.execute(text("SELECT * FROM view_refreshes")))}
    return Statistics(
        daily_throughput=_rows(conn.execute(text(f"SELECT * FROM stats_daily_throughput {clause} ORDER BY day"), params)),
        methodology_outcomes=_rows(conn.execute(text("SELECT * FROM stats_methodology_outcomes ORDER BY methodology"))),
        task_kinds=_rows(conn.execute(text("SELECT * FROM stats_task_kind ORDER BY kind"))),
        assignee_load=_rows(conn.execute(text(
            "SELECT * FROM stats_assignee_load ORDER BY open_tasks DESC, total_tasks DESC, assignee"))),
        refreshed=refreshed,
    )


def overview(conn: Connection, query: q.GetOverview) -> Overview:
    counts = {r.status: int(r.n) for r in conn.execute(text(
        "SELECT status, count(*) AS n FROM workflow_summary GROUP BY status"))}
    active = conn.execute(text("SELECT COALESCE(sum(task_running), 0) FROM workflow_summary")).scalar_one()
    today = conn.execute(text(
        "SELECT count(*) FROM events WHERE recorded_at >= date_trunc('day', now())")).scalar_one()
    total_events = conn.execute(text("SELECT COALESCE(max(position), 0) FROM events")).scalar_one()
    finished = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
    recent = _rows(conn.execute(text(
        """SELECT a.position, a.occurred_at, a.actor, a.event_type, a.summary, a.workflow_id, w.title
           FROM workflow_activity a LEFT JOIN workflow_summary w USING (workflow_id)
           ORDER BY a.position DESC LIMIT :n"""), {"n": query.recent})) if query.recent else []
    return Overview(
        workflows_total=sum(counts.values()), status_counts=counts,
        completion_rate=(counts.get("completed", 0) / finished) if finished else None,
        active_tasks=int(active), events_today=int(today), events_total=int(total_events), recent_activity=recent,
    )


def event_log(conn: Connection, query: q.GetEventLog) -> EventLogPage:
    where, params = [], {"limit": query.limit + 1}
    if query.stream_id:
        where.append("stream_id = :stream_id")
        params["stream_id"] = query.stream_id
    if query.event_types:
        where.append("event_type = ANY(:types)")
        params["types"] = list(query.event_types)
    if query.correlation_id:
        where.append("correlation_id = :corr")
        params["corr"] = query.correlation_id
    if query.recorded_from:
        where.append("recorded_at >= :rf")
        params["rf"] = query.recorded_from
    if query.recorded_to:
        where.append("recorded_at <= :rt")
        params["rt"] = query.recorded_to
    ascending = query.after is not None
    if ascending:
        where.append("position > :after")
        params["after"] = query.after
    elif query.before is not None:
        where.append("position < :before")
        params["before"] = query.before
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = _rows(conn.execute(text(
        f"""SELECT position, stream_id, version, event_type, schema_version, actor, occurred_at, recorded_at,
                   event_id, command_id, correlation_id, causation_id, payload
            FROM events {clause} ORDER BY position {'ASC' if ascending else 'DESC'} LIMIT :limit"""), params))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    if not rows or not more:
        return EventLogPage(rows)
    if ascending:
        return EventLogPage(rows, next_after=rows[-1]["position"])
    return EventLogPage(rows, next_before=rows[-1]["position"])


def correlation_trace(conn: Connection, query: q.GetCorrelationTrace) -> CorrelationTrace:
    corr = str(query.correlation_id)
    commands = _rows(conn.execute(text(
        "SELECT command_id, command_type, actor, aggregate_id, recorded_at, result->>'duration_ms' AS duration_ms "
        "FROM command_log WHERE correlation_id = :c ORDER BY recorded_at"), {"c": corr}))
    checkpoints = [(r.name, int(r.last_txid), int(r.last_position)) for r in conn.execute(text(
        "SELECT name, last_txid::text AS last_txid, last_position FROM projection_checkpoints ORDER BY name"))]
    events = _rows(conn.execute(text(
        "SELECT position, txid::text AS txid, stream_id, version, event_type, actor, recorded_at, command_id "
        "FROM events WHERE correlation_id = :c ORDER BY position"), {"c": corr}))
    if not commands and not events:
        raise NotFoundError(f"Nothing was recorded with correlation id {corr}.")
    for e in events:
        cursor = (int(e.pop("txid")), e["position"])
        e["applied_by"] = [name for name, txid, pos in checkpoints if (txid, pos) >= cursor]
    return CorrelationTrace(corr, commands, events, [c[0] for c in checkpoints])
