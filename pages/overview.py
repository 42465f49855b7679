"""Overview: how much research is in flight and how it is going, whether the system behind it is
well (and why not), and what happened last. Each card refreshes itself every few seconds."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.domain.vocabulary import WORKFLOW_STATUSES
from cqrs_core.infra.errors import CQRSError
from cqrs_core.ops.health import ComponentHealth, worst
from cqrs_core.read.queries import QueryFactory

ui.require_entry_point()

Q = QueryFactory()
REFRESH = "5s"
OVERALL = {
    "healthy": (":material/check_circle:", "All systems healthy"),
    "degraded": (":material/warning:", "Degraded"),
    "unhealthy": (":material/error:", "Unhealthy"),
}


def projection_health(status: Any, stale_after: float) -> ComponentHealth:
    """One projection as a health line, by the same rules as the core's projections check."""
    lag = f"{status.lag_events:,} events / {status.lag_seconds:.1f} s behind"
    if status.state == "faulted":
        return ComponentHealth(
            f"projection {status.name}",
            "unhealthy",
            f"faulted: {status.last_error or 'see the Projections page'}",
        )
    if status.state == "paused":
        return ComponentHealth(f"projection {status.name}", "degraded", f"paused, {lag}")
    if status.lag_seconds > stale_after:
        return ComponentHealth(
            f"projection {status.name}", "degraded", f"{lag} (more than {stale_after:.0f} s)"
        )
    where = f"run by {status.owner}" if status.owner else "no process is running it right now"
    return ComponentHealth(f"projection {status.name}", "healthy", f"{status.state}, {lag}, {where}")


@st.fragment(run_every=REFRESH)
def kpi_card() -> None:
    overview = ui.run_query(Q.get_overview(recent=0))
    if overview is None:
        return
    total, rate = overview.workflows_total, overview.completion_rate
    workflows, completion, active, events = st.columns(4)
    workflows.metric("Workflows", f"{total:,}", border=True, help="Every workflow ever created.")
    completion.metric(
        "Completion rate",
        "—" if rate is None else f"{rate:.0%}",
        border=True,
        help="Completed, of the workflows that finished (completed, failed or cancelled).",
    )
    active.metric("Active tasks", f"{overview.active_tasks:,}", border=True, help="Tasks running right now.")
    events.metric(
        "Events today",
        f"{overview.events_today:,}",
        border=True,
        help=f"Events recorded since midnight (server time); {overview.events_total:,} in all.",
    )
    st.caption("Workflows by status")
    for column, status in zip(st.columns(len(WORKFLOW_STATUSES)), WORKFLOW_STATUSES, strict=True):
        column.metric(status.capitalize(), f"{overview.status_counts.get(status, 0):,}")
    if total == 0:
        st.info(
            "No workflows yet. Create one on the New workflow page, or seed demo data on the Demo page.",
            icon=":material/inbox:",
        )


@st.fragment(run_every=REFRESH)
def health_card() -> None:
    rt = ui.runtime()
    report = rt.health()
    threshold = rt.settings.stale_lag_threshold_seconds
    try:
        statuses = ui.service().execute_query(Q.get_projection_status())
    except CQRSError:
        statuses = None  # the core's projections line below says why
    components = list(report.components)
    if statuses is not None:
        position = next((i for i, c in enumerate(components) if c.name == "projections"), len(components))
        components[position : position + 1] = [projection_health(s, threshold) for s in statuses]
        ui.stale_data_banner(statuses)
    overall = worst([report.status, *(c.status for c in components)])
    icon, headline = OVERALL[overall]
    # A detail can quote an event (a projection's last error): shown as typed, never as markdown.
    problems = [f"{c.name}: {ui.md_escape(c.detail)}" for c in components if c.status != "healthy"]
    message = headline + (" — " + "; ".join(problems) if problems else "")
    {"healthy": st.success, "degraded": st.warning, "unhealthy": st.error}[overall](message, icon=icon)

    table = pd.DataFrame([{"Component": c.name, "Status": c.status, "Detail": c.detail} for c in components])
    colors = {"healthy": "#2E7D4F", "degraded": "#B26A00", "unhealthy": "#B3261E"}
    st.dataframe(
        table.style.map(lambda s: f"color: {colors[s]}; font-weight: 600", subset=["Status"]),
        hide_index=True,
        key="health_table",
        height=ui.table_height(len(table), cap=None),
        column_config={"Detail": st.column_config.TextColumn(width="large")},
    )
    latency = (
        ""
        if report.database_latency_ms is None
        else f" · database round trip {report.database_latency_ms:.1f} ms"
    )
    st.caption(f"Checked {ui.when(report.checked_at)}{latency} · refreshes every 5 seconds")


@st.fragment(run_every=REFRESH)
def activity_card() -> None:
    overview = ui.run_query(Q.get_overview(recent=12))
    if overview is None:
        return
    if not overview.recent_activity:
        st.caption("Nothing has happened yet.")
        return
    table = pd.DataFrame(
        [
            {
                "when": a["occurred_at"],
                "who": a["actor"],
                "what": a["event_type"],
                "workflow": a["title"],
                "details": a["summary"],
                "workflow_id": str(a["workflow_id"]),
            }
            for a in overview.recent_activity
        ]
    )
    picked = st.dataframe(
        table,
        hide_index=True,
        key="activity_table",
        on_select="rerun",
        selection_mode="single-row",
        height=ui.table_height(len(table), cap=None),
        placeholder="—",
        column_order=["when", "who", "what", "workflow", "details"],
        column_config={
            "when": st.column_config.DatetimeColumn(
                "When (UTC)", format="YYYY-MM-DD HH:mm:ss", timezone="UTC"
            ),
            "who": "Who",
            "what": "Event",
            "workflow": st.column_config.TextColumn("Workflow", width="medium"),
            "details": st.column_config.TextColumn("Details", width="large"),
        },
    )
    st.caption("Select a row to open its workflow.")
    if picked.selection.rows:
        st.switch_page(
            "pages/workflows.py",
            query_params={"workflow": table.iloc[picked.selection.rows[0]]["workflow_id"]},
        )


st.title("Overview")
st.caption("How much research is in flight, how it is going, and whether the system behind it is well.")
kpi_card()
st.subheader("Health", anchor=False)
health_card()
st.subheader("Recent activity", anchor=False)
activity_card()
