"""Overview: the open alerts first, then how much research is in flight and how it is going,
whether the system behind it is well (and why not), and what happened last. Each card refreshes
itself every few seconds."""

from __future__ import annotations

import streamlit as st

from cqrs_core.app import live, ui
from cqrs_core.domain.vocabulary import WORKFLOW_STATUSES
from cqrs_core.ops.alerts.rules import rule_title

ui.require_entry_point()

OVERALL = {
    "healthy": (":material/check_circle:", "All systems healthy"),
    "degraded": (":material/warning:", "Degraded"),
    "unhealthy": (":material/error:", "Unhealthy"),
}
STATUS_COLORS = {"healthy": "#2E7D4F", "degraded": "#B26A00", "unhealthy": "#B3261E"}
SHOWN_ACTIVITY = "overview.activity_shown"  # the activity table this session saw last
ALERT_SUMMARY_LENGTH = 160  # characters of an alert's summary in the banner


def viewer_time_zone() -> str:
    """The zone of "today" and of the times shown: the browser's, else CQRS_TIME_ZONE."""
    return ui.viewer_zone_name()


@st.fragment(run_every=live.OVERVIEW_SECONDS)
def alerts_card() -> None:
    """The open alerts, most severe first, in one banner; the Alerts page has them all."""
    card = ui.live_value(ui.live_board().open_alerts(ui.live_since()))
    if card is None:
        return
    if card.total == 0:
        st.caption(":material/notifications_off: No open alerts.")
        return
    lines = []
    for a in card.alerts:
        summary = " ".join(str(a["summary"]).split())
        if len(summary) > ALERT_SUMMARY_LENGTH:
            summary = summary[: ALERT_SUMMARY_LENGTH - 1] + "…"
        icon = ":material/error:" if a["severity"] == "critical" else ":material/warning:"
        # Subjects and summaries can quote anything (an event's error text): shown as typed.
        lines.append(
            f"- {icon} **{ui.md_escape(rule_title(a['rule']))}** · {ui.md_escape(a['subject'])} · "
            f"{a['state']} · {ui.md_escape(summary)}"
        )
    more = card.total - len(card.alerts)
    if more > 0:
        lines.append(f"- … and {more} more")
    headline = f"**{card.total} open alert{'s' if card.total != 1 else ''}**"
    show = st.error if card.critical else st.warning
    show(headline + "\n\n" + "\n".join(lines), icon=":material/notifications_active:")
    st.page_link(
        "pages/alerts.py",
        label="Acknowledge or snooze them on the Alerts page",
        icon=":material/notifications:",
    )


@st.fragment(run_every=live.OVERVIEW_SECONDS)
def kpi_card() -> None:
    zone = viewer_time_zone()
    card = ui.live_value(ui.live_board().overview(ui.live_since(), zone))
    if card is None:
        return
    overview = card.overview
    total, rate = overview.workflows_total, overview.completion_rate
    with ui.wrapping_row():
        st.metric("Workflows", f"{total:,}", border=True, help="Every workflow ever created.")
        st.metric(
            "Completion rate",
            "—" if rate is None else f"{rate:.0%}",
            border=True,
            help="Completed, of the workflows that finished (completed, failed or cancelled).",
        )
        st.metric(
            "Active tasks",
            f"{overview.active_tasks:,}",
            border=True,
            help="Tasks running right now, in workflows still open.",
        )
        st.metric(
            "Events today",
            f"{overview.events_today:,}",
            border=True,
            help=f"Events that happened since midnight ({zone}), by the time they happened, the clock of "
            f"Recent activity; {overview.events_total:,} in all.",
        )
    st.caption(f"“Today” and times on this page are in {ui.md_escape(zone)}.")
    st.caption("Workflows by status")
    for column, status in zip(st.columns(len(WORKFLOW_STATUSES)), WORKFLOW_STATUSES, strict=True):
        column.metric(status.capitalize(), f"{overview.status_counts.get(status, 0):,}")
    if total == 0:
        st.info(
            "No workflows yet. Create one on the New workflow page, or seed demo data on the Demo page.",
            icon=":material/inbox:",
        )


@st.fragment(run_every=live.OVERVIEW_SECONDS)
def health_card() -> None:
    card = ui.live_value(ui.live_board().health(ui.live_since()))
    if card is None:
        return
    if card.statuses is not None:
        ui.stale_data_banner(card.statuses)
    icon, headline = OVERALL[card.overall]
    # A detail can quote an event (a projection's last error): shown as typed, never as markdown.
    problems = [f"{c.name}: {ui.md_escape(c.detail)}" for c in card.components if c.status != "healthy"]
    message = headline + (" — " + "; ".join(problems) if problems else "")
    {"healthy": st.success, "degraded": st.warning, "unhealthy": st.error}[card.overall](message, icon=icon)
    st.dataframe(
        card.table,
        placeholder=ui.MISSING,
        hide_index=True,
        key="health_table",
        height=ui.table_height(len(card.table), cap=None),
        column_config={
            "Status": ui.label_column("Status", STATUS_COLORS),
            "Detail": st.column_config.TextColumn(width="large"),
        },
    )
    report = card.report
    latency = (
        ""
        if report.database_latency_ms is None
        else f" · database round trip {report.database_latency_ms:.1f} ms"
    )
    st.caption(
        f"Checked {ui.when(report.checked_at)}{latency} · refreshes every {live.OVERVIEW_SECONDS} seconds"
    )


@st.fragment(run_every=live.OVERVIEW_SECONDS)
def activity_card() -> None:
    zone = viewer_time_zone()
    card = ui.live_value(ui.live_board().overview(ui.live_since(), zone))
    if card is None:
        return
    table = card.activity
    # A selected row is a row of the table this session was shown, which may be older than the
    # snapshot of this run.
    shown = st.session_state.get(SHOWN_ACTIVITY)
    st.session_state[SHOWN_ACTIVITY] = table
    if table.num_rows == 0:
        st.caption("Nothing has happened yet.")
        return
    picked = st.dataframe(
        table,
        hide_index=True,
        key="activity_table",
        on_select="rerun",
        selection_mode="single-row",
        height=ui.table_height(len(table), cap=None),
        placeholder=ui.MISSING,
        column_order=["when", "who", "what", "workflow", "details"],
        column_config={
            "when": st.column_config.DatetimeColumn(
                f"When ({zone})", format="YYYY-MM-DD HH:mm:ss", timezone=zone
            ),
            "who": "Who",
            "what": "Event",
            "workflow": st.column_config.TextColumn("Workflow", width="medium"),
            "details": st.column_config.TextColumn("Details", width="large"),
        },
    )
    st.caption(f"Newest first by when each event happened ({zone}). Select a row to open its workflow.")
    if picked.selection.rows:
        row = picked.selection.rows[0]
        source = shown if shown is not None and shown.num_rows > row else table
        st.switch_page("pages/workflows.py", query_params={"workflow": source["workflow_id"][row].as_py()})


st.title("Overview")
st.caption("How much research is in flight, how it is going, and whether the system behind it is well.")
ui.refresh_live()
alerts_card()
kpi_card()
st.subheader("Health", anchor=False)
health_card()
st.subheader("Recent activity", anchor=False)
activity_card()
