"""The Workflows page's list: filters, full-text search with highlighted snippets, sorting,
pages and the CSV export. Selecting a row opens that workflow on the Workflow page
(pages/workflow.py, `?workflow=<id>`, `workflow_detail`)."""

from __future__ import annotations

import json
from typing import Any, Literal

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.domain.vocabulary import METHODOLOGIES, PRIORITIES, WORKFLOW_STATUSES
from cqrs_core.read.queries import SORT_COLUMNS, QueryFactory
from cqrs_core.read.results import HIGHLIGHT_START

Q = QueryFactory()
PAGE_SIZES = (10, 20, 50, 100, 200)
# The list's controls; kept while a workflow is open so that "All workflows" returns to the same list.
LIST_STATE = (
    "wf_search",
    "wf_filter_status",
    "wf_filter_methodology",
    "wf_filter_priority",
    "wf_filter_owner",
    "wf_filter_tags",
    "wf_filter_created",
    "wf_sort",
    "wf_order",
    "wf_page_size",
    "wf_page",
)
# The list's widgets keep their values across page switches: the list comes back as it was from a
# workflow's page (pages/workflow.py), whether by "All workflows" or the sidebar's "Workflows".
KEEP: Literal["session"] = "session"
EXPORT_LIMIT = 10_000
SORT_LABELS = {
    "created_at": "Created",
    "last_activity_at": "Last activity",
    "title": "Title",
    "status": "Status",
    "priority": "Priority",
    "methodology": "Methodology",
    "owner": "Owner",
    "progress_pct": "Progress",
    "due_date": "Due date",
    "started_at": "Started",
    "finished_at": "Finished",
    "duration_seconds": "Duration",
    "task_total": "Tasks",
}


def keep_state() -> None:
    """Call on a run that does not draw the list (a workflow is open): Streamlit forgets the
    state of widgets a run does not draw; claiming it keeps the list as it was."""
    for key in LIST_STATE:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def filter_bar() -> tuple[str, dict[str, Any]]:
    """The search text and the filters, as keyword arguments for the list and search queries."""
    search = st.text_input(
        "Search",
        key="wf_search",
        persist_state=KEEP,
        max_chars=500,
        icon=":material/search:",
        placeholder='Words from titles and questions — "exact phrase", or, -exclude',
    )
    status_col, method_col, priority_col, owner_col, tags_col, created_col = st.columns(
        [1.2, 1.5, 1.1, 1, 1.2, 1.3]
    )
    status = status_col.multiselect(
        "Status", WORKFLOW_STATUSES, key="wf_filter_status", persist_state=KEEP, placeholder="Any"
    )
    methodology = method_col.multiselect(
        "Methodology",
        METHODOLOGIES,
        format_func=ui.label,
        key="wf_filter_methodology",
        persist_state=KEEP,
        placeholder="Any",
    )
    priority = priority_col.multiselect(
        "Priority",
        PRIORITIES,
        format_func=ui.label,
        key="wf_filter_priority",
        persist_state=KEEP,
        placeholder="Any",
    )
    owner = owner_col.text_input(
        "Owner", key="wf_filter_owner", persist_state=KEEP, max_chars=100, placeholder="Anyone"
    )
    tags = tags_col.multiselect(
        "Tags (all of)",
        [],
        accept_new_options=True,
        max_selections=10,
        key="wf_filter_tags",
        persist_state=KEEP,
        placeholder="Type a tag",
    )
    created = created_col.date_input(
        "Created between", value=[], key="wf_filter_created", persist_state=KEEP, format="YYYY-MM-DD"
    )
    created_from = created[0] if len(created) >= 1 else None
    created_to = created[1] if len(created) == 2 else None
    filters = {
        "status": status or None,
        "methodology": methodology or None,
        "priority": priority or None,
        "owner": owner.strip() or None,
        "tags": tags or None,
        "created_from": created_from,
        "created_to": created_to,
    }
    return search.strip(), filters


def fetch(search: str, filters: dict[str, Any], **paging: Any) -> Any:
    if search:
        query = ui.build(Q.search_workflows, search, **filters, **paging)
    else:
        query = ui.build(Q.get_workflow_list, **filters, **paging)
    return ui.run_query(query, fresh=True)


def results_table(items: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "workflow_id": str(i["workflow_id"]),
            "title": i["title"],
            "status": i["status"],
            "priority": i["priority"],
            "methodology": ui.label(i["methodology"]),
            "owner": i["owner"],
            "tags": list(i.get("tags") or []),
            "progress": float(i.get("progress_pct") or 0.0),
            "tasks": f"{i['task_completed']}/{i['task_total']}",
            "created": i["created_at"],
            "due": i["due_date"],
        }
        for i in items
    ]
    return pd.DataFrame(rows)


# The results table's columns, in order. What a person scans a list by comes first, each with a
# fixed width, so that it is on screen at 1024 px (ui.KEY_COLUMNS_WIDTH_BUDGET); the rest follow
# and, at 1440 px, fit too (Created and Due ran off-screen behind a 400 px title).
KEY_COLUMNS = ["title", "status", "priority", "created", "due"]
TABLE_COLUMNS = [*KEY_COLUMNS, "owner", "methodology", "progress", "tasks", "tags"]
HIT_WIDTH = 40


def table_columns(search: bool) -> dict[str, Any]:
    """The results table's column configuration; with a search, the title gives up the width of
    the hit number shown before it, so the key columns still fit."""
    return {
        "hit": st.column_config.NumberColumn("#", help='Its line in "Why they matched".', width=HIT_WIDTH),
        "title": st.column_config.TextColumn("Title", width=180 - (HIT_WIDTH if search else 0)),
        "status": st.column_config.TextColumn("Status", width=85),
        "priority": st.column_config.TextColumn("Priority", width=70),
        "created": ui.datetime_column("Created", "YYYY-MM-DD HH:mm", width=125),
        "due": st.column_config.DateColumn("Due", format="YYYY-MM-DD", width=90),
        "owner": st.column_config.TextColumn("Owner", width=90),
        "methodology": st.column_config.TextColumn("Methodology", width=120),
        "progress": st.column_config.ProgressColumn(
            "Progress", min_value=0, max_value=100, format="%.0f%%", width=75
        ),
        "tasks": st.column_config.TextColumn("Tasks done", help="Completed of all tasks.", width=80),
        "tags": st.column_config.ListColumn("Tags", width=110),
    }


def hit_reason(item: dict[str, Any]) -> str:
    """Why a search hit matched, as HTML: the matched words of its title and question, and its
    matched tags, highlighted; a part where nothing matched is left out (a hit found by a tag
    alone shows its tags)."""
    parts = []
    snippet = item.get("snippet") or ""
    if HIGHLIGHT_START in snippet:
        # <bdi> keeps a right-to-left override in one piece of text from reordering the rest.
        parts.append(f"<bdi>{ui.highlighted_html(snippet)}</bdi>")
    if item.get("tag_snippet"):
        parts.append(
            f'<span style="opacity:.85">tags:</span> <bdi>{ui.highlighted_html(item["tag_snippet"])}</bdi>'
        )
    return " · ".join(parts) or f"<bdi>{ui.highlighted_html(item['title'])}</bdi>"


def hits_card(items: list[dict[str, Any]], first: int) -> None:
    """The reason each hit on this page matched, numbered like the table's # column; the table
    below holds the hits themselves (title, status, owner …), so the lines do not repeat them."""
    lines = "".join(
        f'<li value="{n}" style="margin:0 0 .3rem 0">{hit_reason(item)}</li>'
        for n, item in enumerate(items, start=first)
    )
    st.html(
        '<div class="wf-search-hits" style="font-size:.9rem"><b>Why they matched</b>'
        f'<ol style="margin:.25rem 0 0 0">{lines}</ol></div>'
    )


def show() -> None:
    """The list screen."""
    st.title("Workflows")
    st.caption("Find research workflows; select a row to open it.")
    ui.stale_data_banner()
    search, filters = filter_bar()

    st.session_state.setdefault("wf_order", "Descending")
    st.session_state.setdefault("wf_page_size", 20)
    # A row that wraps, each control as wide as it needs: in columns, "Ascending" was clipped.
    with ui.wrapping_row():
        sort = st.selectbox(
            "Sort by",
            SORT_COLUMNS,
            format_func=SORT_LABELS.__getitem__,
            key="wf_sort",
            persist_state=KEEP,
            disabled=bool(search),
            help="Search results are ordered by relevance.",
            width=200,
        )
        order = st.segmented_control(
            "Order",
            ["Descending", "Ascending"],
            required=True,
            key="wf_order",
            persist_state=KEEP,
            disabled=bool(search),
        )
        page_size = st.selectbox(
            "Rows per page", PAGE_SIZES, key="wf_page_size", persist_state=KEEP, width=120
        )

    # A new filter, search, sort or page size starts again at page 1.
    signature = json.dumps([search, filters, sort, order, page_size], default=str)
    if st.session_state.get("wf_signature") != signature:
        st.session_state["wf_signature"] = signature
        st.session_state["wf_page"] = 1
    page = st.session_state.get("wf_page", 1)

    paging = {"page": page, "page_size": page_size}
    if not search:
        paging.update(sort=sort, descending=order == "Descending")
    result = fetch(search, filters, **paging)
    if result is None:
        return
    if result.page > result.page_count:  # the data shrank under us: show the last page there is
        st.session_state["wf_page"] = paging["page"] = result.page_count
        result = fetch(search, filters, **paging)
        if result is None:
            return

    if result.total == 0:
        if search or any(v for v in filters.values()):
            st.info(
                "No workflow matches. Loosen the filters or search for fewer words.",
                icon=":material/search_off:",
            )
        else:
            st.info(
                "There are no workflows yet. Create one on the New workflow page, or seed demo data on the "
                "Demo page.",
                icon=":material/inbox:",
            )
            st.page_link("pages/new_workflow.py", label="New workflow", icon=":material/add_circle:")
        return

    first = (result.page - 1) * result.page_size + 1
    last = first + len(result.items) - 1
    # One line that wraps: the count on the left, the export button as wide as its label on the
    # right (a fifth of the width cut it to "Export C…" at 1024 px).
    summary = st.container(horizontal=True, vertical_alignment="bottom", horizontal_alignment="distribute")
    summary.caption(
        f"{first:,}–{last:,} of {result.total:,} workflows" + (" · ordered by relevance" if search else "")
    )
    service, descending = ui.service(), order == "Descending"
    summary.download_button(
        "Export CSV",
        lambda: ui.workflows_csv(
            service, search, filters, sort=sort, descending=descending, limit=EXPORT_LIMIT
        ),
        file_name="workflows.csv",
        mime="text/csv",
        icon=":material/download:",
        key="wf_export",
        # No rerun on click: the file is built from the callable while the page waits, and a rerun
        # started by the same click replaces that callable or drops its answer (Streamlit 1.67),
        # so about one click in ten gave no file (tests/integration/test_proxy_deployment.py).
        on_click="ignore",
        help=f"Every matching workflow (up to {EXPORT_LIMIT:,}), not only this page.",
    )

    if search:
        hits_card(result.items, first)

    table = results_table(result.items)
    if search:  # the number of each hit's line in "Why they matched"
        table.insert(0, "hit", range(first, first + len(table)))
    columns = [
        *(["hit"] if search else []),
        *KEY_COLUMNS,
        *(c for c in TABLE_COLUMNS if c not in KEY_COLUMNS),
    ]
    selection = st.dataframe(
        table,
        key="wf_table",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        column_order=columns,
        placeholder=ui.MISSING,
        height=ui.table_height(len(table)),
        column_config=table_columns(bool(search)),
    )
    if result.page_count > 1:
        st.pagination(result.page_count, key="wf_page", persist_state=KEEP)
    if selection.selection.rows:
        st.switch_page(
            "pages/workflow.py",
            query_params={"workflow": table.iloc[selection.selection.rows[0]]["workflow_id"]},
        )
