"""Overview: is the system up, how much has happened, and how quickly does the database answer."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cqrs_core.app_runtime import AppRuntime
from cqrs_core.health import HealthReport

STATUS_COLORS = {"healthy": "#2E7D4F", "degraded": "#B26A00", "unhealthy": "#B3261E"}

runtime: AppRuntime = st.session_state.runtime

st.title("Overview")
st.caption("The event log every screen is built from, and the database that holds it.")


def number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def components_table(report: HealthReport):
    table = pd.DataFrame([{"Component": c.name, "Status": c.status, "Detail": c.detail} for c in report.components])
    return table.style.map(lambda status: f"color: {STATUS_COLORS[status]}; font-weight: 600", subset=["Status"])


@st.fragment(run_every="5s")
def system_card() -> None:
    report = runtime.health()
    events, head, latency = st.columns(3)
    events.metric("Events", number(report.event_count), help="Events in the log, across all workflows.", border=True)
    head.metric(
        "Head position",
        number(report.head_position),
        help="Position of the newest event; projections measure their lag against it.",
        border=True,
    )
    latency.metric(
        "Database latency",
        "—" if report.database_latency_ms is None else f"{report.database_latency_ms:.1f} ms",
        help="Round trip of a trivial query from this app process.",
        border=True,
    )
    if report.event_count == 0:
        st.info("No events yet — the log fills as soon as someone creates a workflow.", icon=":material/inbox:")

    st.subheader("Health")
    st.dataframe(components_table(report), hide_index=True, width="stretch")
    st.caption(f"Checked {report.checked_at:%H:%M:%S} UTC · refreshes every 5 seconds")


system_card()
