"""Query handlers: plain SQL over the read models (never aggregates). Each takes a `SqlReader`
(an open read-only transaction, see query_bus.py) and the query, and returns plain data for the
pages.

Every round trip to the server costs about as much as a small indexed query, so the handlers
the pages call most are written as ONE statement (`@single_statement`): the page and its total,
or a workflow with its tasks and timeline, come back together, with the checkpoint cursors of
the projections read in the same statement (one statement sees one snapshot). The bus then runs
it in the implicit transaction of a single message, with no BEGIN or COMMIT round trips."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from cqrs_core.infra.errors import NotFoundError, ValidationError
from cqrs_core.read import queries as q
from cqrs_core.read.tables import TASK_SUMMARY_TABLE, WORKFLOW_ACTIVITY_TABLE, WORKFLOW_SUMMARY_TABLE

HIGHLIGHT_START, HIGHLIGHT_STOP = "\ue000", "\ue001"  # private-use marks: no user text can fake them

LIST_COLUMNS = (
    "workflow_id",
    "title",
    "research_question",
    "methodology",
    "status",
    "priority",
    "owner",
    "tags",
    "due_date",
    "created_at",
    "started_at",
    "finished_at",
    "duration_seconds",
    "task_total",
    "task_pending",
    "task_running",
    "task_completed",
    "task_failed",
    "task_cancelled",
    "progress_pct",
    "last_activity_at",
)
_LIST_COLUMNS = ", ".join(LIST_COLUMNS)

_SORT_SQL = {name: name for name in q.SORT_COLUMNS} | {"priority": "priority_rank"}
# Sort columns declared NOT NULL (0002): "NULLS LAST" changes nothing for them, and leaving it out
# lets one (column, workflow_id) index serve both directions (0004).
_NOT_NULL_SORTS = frozenset(
    {
        "created_at",
        "title",
        "status",
        "priority",
        "methodology",
        "owner",
        "progress_pct",
        "last_activity_at",
        "task_total",
    }
)
# From this offset on a page is found by its ids first (an index-only walk past the skipped rows),
# then only its own rows are read.
DEFERRED_JOIN_OFFSET = 100

_DETAIL_COLUMNS = WORKFLOW_SUMMARY_TABLE.column_names  # every column but the generated search_vector
_TASK_COLUMNS = TASK_SUMMARY_TABLE.column_names
_ACTIVITY_COLUMNS = ("position", "event_type", "actor", "occurred_at", "task_id", "correlation_id", "summary")


def single_statement(handler: Callable) -> Callable:
    """Marks a handler that sends exactly one statement, which selects `reader.cursors_sql` as
    its first column in every row it returns (and returns at least one row)."""
    handler.single_statement = True  # type: ignore[attr-defined]
    return handler


class SqlReader:
    """What a handler reads through: a raw DBAPI cursor inside the bus's read-only transaction.

    `prologue` (the transaction settings and the statement timeout) is sent in the same message
    as the first statement. `cursors_sql` is a scalar subquery giving the checkpoint cursors of
    the query's projections as JSON; a single-statement handler selects it and hands the value
    to `take_cursors`. `prepared` is the set of statements this database connection has
    prepared (it lives as long as the connection)."""

    def __init__(
        self,
        cursor: Any,
        prologue: str,
        projections: Sequence[str],
        *,
        timeout_ms: int = 0,
        prepared: set[str] | None = None,
    ) -> None:
        self._cursor = cursor
        self._prologue = prologue
        self._timeout_ms = timeout_ms
        self._prepared = prepared if prepared is not None else set()
        self.statements = 0
        self.projections = tuple(projections)
        self.cursors: dict[str, tuple[int, int]] | None = None if self.projections else {}
        self.cursors_sql = (
            "(SELECT json_object_agg(name, json_build_array(last_txid::text, last_position)) "
            "FROM projection_checkpoints WHERE name = ANY(%(__projections)s))"
            if self.projections
            else "NULL"
        )

    def execute(
        self, sql: str, params: Mapping[str, Any] | None = None, *, prepare: bool = False
    ) -> tuple[list[str], list[tuple]]:
        """Run one statement; returns (column names, rows as tuples). Parameters use the
        driver's %(name)s style. `prepare=True` plans the statement once per connection
        (PREPARE, then EXECUTE): for a statement whose text never changes and whose plan does
        not depend on its parameters, planning costs about as much as running it."""
        args = dict(params or {})
        if self.projections:
            args["__projections"] = list(self.projections)
        if prepare:
            sql, args = self._prepared_call(sql, args)
        if self._prologue:
            sql, self._prologue = self._prologue + sql, ""
        self.statements += 1
        self._cursor.execute(sql, args)
        if self._cursor.description is None:
            return [], []
        return [d[0] for d in self._cursor.description], self._cursor.fetchall()

    def _prepared_call(self, sql: str, args: dict[str, Any]) -> tuple[str, Any]:
        name, body, names = _prepared_form(sql)
        if name not in self._prepared:
            # Its own round trip, once per connection; under the timeout, as parsing takes locks.
            self._cursor.execute(
                f"SET LOCAL statement_timeout = {max(1, self._timeout_ms)}; PREPARE {name} AS {body}"
            )
            self._prepared.add(name)
        return f"EXECUTE {name}({', '.join(['%s'] * len(names))})", tuple(args[n] for n in names)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        names, rows = self.execute(sql, params)
        return [dict(zip(names, r, strict=True)) for r in rows]

    def take_cursors(self, raw: Mapping[str, Sequence[Any]] | None) -> None:
        self.cursors = {name: (int(txid), int(pos)) for name, (txid, pos) in (raw or {}).items()}


_PARAM = re.compile(r"%\((\w+)\)s")


@functools.lru_cache(maxsize=64)
def _prepared_form(sql: str) -> tuple[str, str, list[str]]:
    """(statement name, body with $n parameters, parameter names in $n order)."""
    names = list(dict.fromkeys(_PARAM.findall(sql)))
    body = _PARAM.sub(lambda m: f"${names.index(m.group(1)) + 1}", sql)
    return "cqrs_q_" + hashlib.sha1(body.encode()).hexdigest()[:16], body, names  # a changed text: a new name


# ---------------------------------------------------------------- results


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
    activity: list[dict[str, Any]]  # one page of the timeline, in position order
    activity_total: int = 0  # entries in the whole timeline
    activity_next_before: int | None = None  # `activity_before` of the next older page; None: no older one


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
    total: int | None = None  # with a stream_id: the matching events in the stream, every page together


@dataclass(frozen=True)
class CorrelationTrace:
    correlation_id: str
    commands: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- JSON rows back to driver types

# Rows nested in one statement come back as JSON; these turn each value back into what the driver
# returns for the column's type, so a nested row equals a row read on its own.
_FROM_JSON: dict[str, Callable[[Any], Any]] = {
    "timestamptz": datetime.fromisoformat,
    "date": date.fromisoformat,
    "uuid": uuid.UUID,
    "double precision": float,  # JSON writes 2.0 as 2
}


def _json_converters(columns: Iterable[tuple[str, str]], wanted: Sequence[str]) -> list[tuple[str, Callable]]:
    types = dict(columns)
    return [(c, _FROM_JSON[types[c]]) for c in wanted if types.get(c) in _FROM_JSON]


_TASK_JSON = _json_converters(TASK_SUMMARY_TABLE.columns, _TASK_COLUMNS)
_ACTIVITY_JSON = _json_converters(WORKFLOW_ACTIVITY_TABLE.columns, _ACTIVITY_COLUMNS)
_RECENT_JSON: list[tuple[str, Callable]] = [
    ("occurred_at", datetime.fromisoformat),
    ("workflow_id", uuid.UUID),
]


def _from_json(raw: Any, converters: list[tuple[str, Callable]]) -> list[dict[str, Any]]:
    rows = json.loads(raw) if isinstance(raw, str) else (raw or [])
    # A timeline repeats its ids and timestamps: convert each distinct value once.
    memos: list[tuple[str, Callable, dict[Any, Any]]] = [(name, convert, {}) for name, convert in converters]
    for row in rows:
        for name, convert, memo in memos:
            value = row[name]
            if value is not None:
                converted = memo.get(value)
                if converted is None:
                    converted = memo[value] = convert(value)
                row[name] = converted
    return rows


# ---------------------------------------------------------------- workflows


def _filters(query: q.WorkflowFilters) -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    if query.status:
        where.append("status = ANY(%(status)s)")
        params["status"] = list(query.status)
    if query.methodology:
        where.append("methodology = ANY(%(methodology)s)")
        params["methodology"] = list(query.methodology)
    if query.priority:
        where.append("priority = ANY(%(priority)s)")
        params["priority"] = list(query.priority)
    if query.owner:
        where.append("owner = %(owner)s")
        params["owner"] = query.owner
    if query.tags:
        where.append("tags @> CAST(%(tags)s AS text[])")
        params["tags"] = list(query.tags)
    if query.created_from:
        where.append("created_at >= %(created_from)s")
        params["created_from"] = query.created_from
    if query.created_to:
        where.append("created_at < %(created_to)s")
        params["created_to"] = query.created_to + timedelta(days=1)
    return where, params


def _page_items(rows: list[tuple], skip: int) -> list[dict[str, Any]]:
    # rows: (cursors, total, <LIST_COLUMNS...>, extras...); a page past the end is one row of NULLs.
    return [dict(zip(LIST_COLUMNS, r[skip:], strict=False)) for r in rows if r[skip] is not None]


@single_statement
def workflow_list(reader: SqlReader, query: q.GetWorkflowList) -> WorkflowPage:
    """The page and the exact total in one statement: the total is an uncorrelated subquery
    (one index-only count), the page an ordered index walk that stops after its rows."""
    where, params = _filters(query)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    direction = "DESC" if query.descending else "ASC"
    column = _SORT_SQL[query.sort]
    nulls = "" if query.sort in _NOT_NULL_SORTS else " NULLS LAST"
    offset = (query.page - 1) * query.page_size
    params.update(limit=query.page_size, offset=offset)
    order = f"{column} {direction}{nulls}, workflow_id {direction}"
    if offset >= DEFERRED_JOIN_OFFSET:
        page_sql = (
            f"SELECT {', '.join('w.' + c for c in LIST_COLUMNS)}, w.{column} AS sort_key "
            f"FROM (SELECT workflow_id FROM workflow_summary {clause} ORDER BY {order} "
            f"LIMIT %(limit)s OFFSET %(offset)s) AS ids JOIN workflow_summary AS w USING (workflow_id)"
        )
    else:
        page_sql = (
            f"SELECT {_LIST_COLUMNS}, {column} AS sort_key FROM workflow_summary {clause} "
            f"ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
        )
    names, rows = reader.execute(
        f"""SELECT {reader.cursors_sql} AS cursors, (SELECT count(*) FROM workflow_summary {clause}) AS total, p.*
            FROM (SELECT) AS one LEFT JOIN ({page_sql}) AS p ON true
            ORDER BY p.sort_key {direction}{nulls}, p.workflow_id {direction}""",
        params,
    )
    reader.take_cursors(rows[0][0])
    return WorkflowPage(_page_items(rows, 2), int(rows[0][1]), query.page, query.page_size)


# A lexeme in a tsquery's text form: single-quoted, a quote inside doubled.
_LEXEME = r"'(?:[^']|'')*'"


@single_statement
def search_workflows(reader: SqlReader, query: q.SearchWorkflows) -> WorkflowPage:
    """Ranked full-text search: the match set is found once (GIN) and ranked in a materialized
    CTE of ids; the total counts it and only the page's rows are read and headlined
    (ts_headline is the costly part).

    The words are counted after PostgreSQL parsed them (stop words are gone by then); with more
    than MAX_SEARCH_TERMS the query is NULL, so nothing is searched, and the count comes back
    to refuse it."""
    where, params = _filters(query)
    where.append("search_vector @@ tsq.tsq")
    params.update(
        text=query.text,
        limit=query.page_size,
        offset=(query.page - 1) * query.page_size,
        lexeme=_LEXEME,
        max_terms=q.MAX_SEARCH_TERMS,
        opts=f"StartSel={HIGHLIGHT_START}, StopSel={HIGHLIGHT_STOP}, MaxWords=30, MinWords=12, "
        'MaxFragments=2, FragmentDelimiter=" … "',
    )
    clause = " AND ".join(where)
    cols = ", ".join("w." + c for c in LIST_COLUMNS)
    names, rows = reader.execute(
        f"""
        WITH parsed AS (
            SELECT q, (SELECT count(*) FROM regexp_matches(q::text, %(lexeme)s, 'g')) AS terms
            FROM websearch_to_tsquery('english', %(text)s) AS q
        ),
        tsq AS (SELECT CASE WHEN terms <= %(max_terms)s THEN q END AS tsq, terms FROM parsed),
        matches AS MATERIALIZED (
            SELECT workflow_id, created_at,
                   ts_rank_cd(search_vector, tsq.tsq)
                     + CASE WHEN lower(title) = lower(%(text)s) THEN 100 ELSE 0 END AS rank
            FROM workflow_summary, tsq
            WHERE {clause}
        ),
        top AS (
            SELECT workflow_id, rank FROM matches
            ORDER BY rank DESC, created_at DESC, workflow_id LIMIT %(limit)s OFFSET %(offset)s
        )
        SELECT {reader.cursors_sql} AS cursors, (SELECT count(*) FROM matches) AS total,
               (SELECT terms FROM tsq) AS terms, p.*
        FROM (SELECT) AS one LEFT JOIN (
            SELECT {cols}, top.rank,
                   ts_headline('english', w.title || ' — ' || w.research_question, tsq.tsq, %(opts)s) AS snippet
            FROM top JOIN workflow_summary AS w USING (workflow_id) CROSS JOIN tsq
        ) AS p ON true
        ORDER BY p.rank DESC, p.created_at DESC, p.workflow_id
        """,
        params,
    )
    reader.take_cursors(rows[0][0])
    if rows[0][2] > q.MAX_SEARCH_TERMS:
        raise ValidationError(f"Search for at most {q.MAX_SEARCH_TERMS} words.")
    keys = (*LIST_COLUMNS, "rank", "snippet")
    items = [dict(zip(keys, r[3:], strict=True)) for r in rows if r[3] is not None]
    return WorkflowPage(items, int(rows[0][1]), query.page, query.page_size)


@single_statement
def workflow_detail(reader: SqlReader, query: q.GetWorkflow) -> WorkflowDetail:
    """The workflow row, its tasks and one page of its timeline in one statement (tasks and
    timeline as JSON arrays, turned back into driver types here). The page is a keyset walk
    down the (workflow_id, position) index from `activity_before`; one row more than the page
    tells whether an older page exists; the total is an index-only count."""
    params = {"w": str(query.workflow_id), "before": query.activity_before, "limit": query.activity_limit + 1}
    names, rows = reader.execute(
        f"""SELECT {reader.cursors_sql} AS cursors,
                   (SELECT json_agg(t ORDER BY t.created_at, t.name)
                    FROM (SELECT {", ".join(_TASK_COLUMNS)} FROM task_summary
                          WHERE workflow_id = %(w)s::uuid) AS t) AS tasks,
                   (SELECT json_agg(a ORDER BY a.position)
                    FROM (SELECT {", ".join(_ACTIVITY_COLUMNS)} FROM workflow_activity
                          WHERE workflow_id = %(w)s::uuid
                            AND position < COALESCE(CAST(%(before)s AS bigint), 9223372036854775807)
                          ORDER BY position DESC LIMIT CAST(%(limit)s AS bigint)) AS a) AS activity,
                   (SELECT count(*) FROM workflow_activity WHERE workflow_id = %(w)s::uuid) AS activity_total,
                   w.*
            FROM (SELECT) AS one
            LEFT JOIN (SELECT {", ".join(_DETAIL_COLUMNS)} FROM workflow_summary WHERE workflow_id = %(w)s::uuid) AS w
                ON true""",
        params,
        prepare=True,
    )
    row = rows[0]
    reader.take_cursors(row[0])
    if row[4] is None:
        raise NotFoundError(
            f"Workflow {params['w']} was not found (it may still be on its way to the read model)."
        )
    workflow = dict(zip(names[4:], row[4:], strict=True))
    activity = _from_json(row[2], _ACTIVITY_JSON)
    next_before = None
    if len(activity) > query.activity_limit:  # the extra (oldest) row only says an older page exists
        activity = activity[1:]
        next_before = activity[0]["position"]
    return WorkflowDetail(workflow, _from_json(row[1], _TASK_JSON), activity, int(row[3]), next_before)


# ---------------------------------------------------------------- statistics and overview


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
    names, rows = reader.execute(
        f"""SELECT {reader.cursors_sql} AS cursors,
                   (SELECT json_object_agg(status, json_build_array(n, running) ORDER BY status)
                    FROM (SELECT status, count(*) AS n, COALESCE(sum(task_running), 0) AS running
                          FROM workflow_summary GROUP BY status) AS s) AS by_status,
                   (SELECT count(*) FROM events WHERE recorded_at >= date_trunc('day', now())) AS today,
                   (SELECT COALESCE(max(position), 0) FROM events) AS total_events,
                   (SELECT json_agg(r ORDER BY r.position DESC) FROM (
                        SELECT a.position, a.occurred_at, a.actor, a.event_type, a.summary, a.workflow_id, w.title
                        FROM workflow_activity a LEFT JOIN workflow_summary w USING (workflow_id)
                        ORDER BY a.position DESC LIMIT %(n)s) AS r) AS recent""",
        {"n": query.recent},
    )
    cursors, by_status, today, total_events, recent = rows[0]
    reader.take_cursors(cursors)
    by_status = by_status or {}
    counts = {status: int(n) for status, (n, _running) in by_status.items()}
    active = sum(int(running) for _n, running in by_status.values())
    finished = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
    return Overview(
        workflows_total=sum(counts.values()),
        status_counts=counts,
        completion_rate=(counts.get("completed", 0) / finished) if finished else None,
        active_tasks=active,
        events_today=int(today),
        events_total=int(total_events),
        recent_activity=_from_json(recent, _RECENT_JSON) if query.recent else [],
    )


# ---------------------------------------------------------------- the log


@single_statement
def event_log(reader: SqlReader, query: q.GetEventLog) -> EventLogPage:
    """One page of the log, keyset by position. For one stream the walk goes down or up its
    (stream_id, version) index instead: within a stream, versions grow with positions (version
    n + 1 is appended after version n was committed), so the cursor's version bounds the range
    and a page deep in a stream of 100,000 events costs what the first one does."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": query.limit + 1}
    if query.stream_id:
        where.append("stream_id = %(stream_id)s")
        params["stream_id"] = query.stream_id
    if query.event_types:
        where.append("event_type = ANY(%(types)s)")
        params["types"] = list(query.event_types)
    if query.correlation_id:
        where.append("correlation_id = %(corr)s::uuid")
        params["corr"] = str(query.correlation_id)
    if query.recorded_from:
        where.append("recorded_at >= %(rf)s")
        params["rf"] = query.recorded_from
    if query.recorded_to:
        where.append("recorded_at <= %(rt)s")
        params["rt"] = query.recorded_to
    filters = list(where)
    ascending = query.after is not None
    # The version of the cursor's event if it belongs to the stream; else no bound (position decides).
    cursor_version = "(SELECT version FROM events WHERE position = %(cursor)s AND stream_id = %(stream_id)s)"
    if ascending:
        where.append("position > %(after)s")
        params["after"] = params["cursor"] = query.after
        if query.stream_id:
            where.append(f"version > COALESCE({cursor_version}, 0)")
    elif query.before is not None:
        where.append("position < %(before)s")
        params["before"] = params["cursor"] = query.before
        if query.stream_id:
            where.append(f"version < COALESCE({cursor_version}, 2147483647)")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    direction = "ASC" if ascending else "DESC"
    key = "version" if query.stream_id else "position"
    total = f"(SELECT count(*) FROM events WHERE {' AND '.join(filters)})" if query.stream_id else "NULL"
    names, found = reader.execute(
        f"""SELECT {total} AS total, p.*
            FROM (SELECT) AS one LEFT JOIN (
                SELECT position, stream_id, version, event_type, schema_version, actor, occurred_at, recorded_at,
                       event_id, command_id, correlation_id, causation_id, payload
                FROM events {clause} ORDER BY {key} {direction} LIMIT %(limit)s) AS p ON true
            ORDER BY p.position {direction}""",
        params,
    )
    count = None if found[0][0] is None else int(found[0][0])
    rows = [dict(zip(names[1:], r[1:], strict=True)) for r in found if r[1] is not None]
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    if not rows or not more:
        return EventLogPage(rows, total=count)
    if ascending:
        return EventLogPage(rows, next_after=rows[-1]["position"], total=count)
    return EventLogPage(rows, next_before=rows[-1]["position"], total=count)


def correlation_trace(reader: SqlReader, query: q.GetCorrelationTrace) -> CorrelationTrace:
    corr = str(query.correlation_id)
    commands = reader.rows(
        "SELECT command_id, command_type, actor, aggregate_id, recorded_at, result->>'duration_ms' AS duration_ms "
        "FROM command_log WHERE correlation_id = %(c)s::uuid ORDER BY recorded_at",
        {"c": corr},
    )
    checkpoints = [
        (r["name"], int(r["last_txid"]), int(r["last_position"]))
        for r in reader.rows(
            "SELECT name, last_txid::text AS last_txid, last_position FROM projection_checkpoints ORDER BY name"
        )
    ]
    events = reader.rows(
        "SELECT position, txid::text AS txid, stream_id, version, event_type, actor, recorded_at, command_id "
        "FROM events WHERE correlation_id = %(c)s::uuid ORDER BY position",
        {"c": corr},
    )
    if not commands and not events:
        raise NotFoundError(f"Nothing was recorded with correlation id {corr}.")
    for e in events:
        cursor = (int(e.pop("txid")), e["position"])
        e["applied_by"] = [name for name, txid, pos in checkpoints if (txid, pos) >= cursor]
    return CorrelationTrace(corr, commands, events, [c[0] for c in checkpoints])
