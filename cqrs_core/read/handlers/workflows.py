"""Workflow queries: the list page and its exact total, ranked full-text search, a workflow's
detail with its tasks and one page of its timeline. Each is one statement."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cqrs_core.infra.errors import NotFoundError, ValidationError
from cqrs_core.read import queries as q
from cqrs_core.read.results import HIGHLIGHT_START, HIGHLIGHT_STOP, WorkflowDetail, WorkflowPage
from cqrs_core.read.sql import SqlReader, json_converters, rows_from_json, single_statement
from cqrs_core.read.tables import TASK_SUMMARY_TABLE, WORKFLOW_ACTIVITY_TABLE, WORKFLOW_SUMMARY_TABLE

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
_TASK_JSON = json_converters(TASK_SUMMARY_TABLE.columns, _TASK_COLUMNS)
_ACTIVITY_JSON = json_converters(WORKFLOW_ACTIVITY_TABLE.columns, _ACTIVITY_COLUMNS)


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


# A search of nothing but words such as "the" (PostgreSQL drops them before searching).
STOP_WORDS_ONLY = (
    'The search ignores common words such as "the", "of" and "and"; search for something more specific.'
)
# Between a hit's tags in its `tag_snippet` (the tags with the matched ones highlighted).
TAG_SEPARATOR = ", "
# A lexeme in a tsquery's text form: single-quoted, a quote inside doubled.
_LEXEME = r"'(?:[^']|'')*'"


@single_statement
def search_workflows(reader: SqlReader, query: q.SearchWorkflows) -> WorkflowPage:
    """Ranked full-text search: the match set is found once (GIN) and ranked in a materialized
    CTE of ids; the total counts it and only the page's rows are read and headlined
    (ts_headline is the costly part).

    The words are counted after PostgreSQL parsed them (stop words are gone by then); with more
    than MAX_SEARCH_TERMS the query is NULL, so nothing is searched, and the count comes back
    to refuse it; with none (only stop words) the search is refused too, saying why.

    Each hit carries `snippet` (title and question, matched words marked) and `tag_snippet` (its
    tags with the matched ones marked; None when no tag matched), so a hit found by a tag alone
    still shows why it was found."""
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
        tag_opts=f"StartSel={HIGHLIGHT_START}, StopSel={HIGHLIGHT_STOP}, HighlightAll=true",
        tag_separator=TAG_SEPARATOR,
        mark=HIGHLIGHT_START,
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
                   ts_headline('english', w.title || ' — ' || w.research_question, tsq.tsq, %(opts)s) AS snippet,
                   (SELECT h FROM ts_headline('english', array_to_string(w.tags, %(tag_separator)s), tsq.tsq,
                                              %(tag_opts)s) AS h
                    WHERE strpos(h, %(mark)s) > 0) AS tag_snippet
            FROM top JOIN workflow_summary AS w USING (workflow_id) CROSS JOIN tsq
        ) AS p ON true
        ORDER BY p.rank DESC, p.created_at DESC, p.workflow_id
        """,
        params,
    )
    reader.take_cursors(rows[0][0])
    if rows[0][2] > q.MAX_SEARCH_TERMS:
        raise ValidationError(f"Search for at most {q.MAX_SEARCH_TERMS} words.")
    if rows[0][2] == 0:
        raise ValidationError(STOP_WORDS_ONLY)
    keys = (*LIST_COLUMNS, "rank", "snippet", "tag_snippet")
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
                   (SELECT json_agg(t ORDER BY t.added_version NULLS LAST, t.created_at, t.name)
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
    activity = rows_from_json(row[2], _ACTIVITY_JSON)
    next_before = None
    if len(activity) > query.activity_limit:  # the extra (oldest) row only says an older page exists
        activity = activity[1:]
        next_before = activity[0]["position"]
    return WorkflowDetail(workflow, rows_from_json(row[1], _TASK_JSON), activity, int(row[3]), next_before)
