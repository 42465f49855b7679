"""Statistics: how research work flows, from the materialized views.

Each chart says which view it reads and when that view was last refreshed (the scheduler
refreshes them in the background; operators can refresh them now). Every chart's table can be
downloaded as CSV.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.read.queries import QueryFactory

ui.require_entry_point()

OUTCOME_COLORS = {
    "completed": "#2E7D4F",
    "failed": "#B3261E",
    "cancelled": "#8A8F98",
    "open": "#1F6F78",
    "created": "#1F6F78",
    "pending": "#9DB8BB",
    "running": "#1F6F78",
}
TOP_ASSIGNEES = 15


def plotly_label(value: str) -> str:
    """A vocabulary word (methodology, task kind, outcome) as a Plotly label, shown as typed."""
    return ui.plotly_escape(ui.label(value))


def freshness(stats: Any, view: str) -> None:
    info = stats.refreshed.get(view)
    if not info:
        st.caption(f"From the view {view}: not refreshed since it was created.")
        return
    st.caption(
        f"From the view {view}, refreshed {ui.when(info['refreshed_at'])} ({ui.ago(info['refreshed_at'])}; "
        f"took {info['duration_ms']:.0f} ms, {info['row_count']:,} rows)."
    )


def download(table: pd.DataFrame, name: str) -> None:
    st.download_button(
        f"Download {name}.csv",
        ui.dataframe_csv(table),
        file_name=f"{name}.csv",
        mime="text/csv",
        icon=":material/download:",
        key=f"stats_csv_{name}",
    )


def duration_unit(seconds: pd.Series) -> tuple[float, str]:
    """The unit that keeps the largest duration readable: (seconds per unit, name)."""
    biggest = seconds.max(skipna=True)
    if pd.isna(biggest) or biggest < 2 * 3600:
        return 60.0, "minutes"
    if biggest < 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def layout(fig: go.Figure, title: str, x: str, y: str, **extra: Any) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "y": 0.98, "yanchor": "top"},
        xaxis_title=x,
        yaxis_title=y,
        legend_title_text="",
        margin={"t": 90, "b": 40},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
        **extra,
    )
    return fig


def throughput_chart(stats: Any, date_from: date, date_to: date) -> None:
    st.subheader("Throughput", anchor=False)
    table = pd.DataFrame(
        stats.daily_throughput, columns=["day", "created", "completed", "failed", "cancelled"]
    )
    if table.empty:
        st.info(
            f"No workflow was created or finished between {date_from} and {date_to}. Widen the date range.",
            icon=":material/date_range:",
        )
    else:
        days = pd.DataFrame({"day": pd.date_range(date_from, date_to, freq="D").date})
        daily = days.merge(
            table.assign(day=pd.to_datetime(table["day"]).dt.date), on="day", how="left"
        ).fillna(0)
        fig = go.Figure()
        for outcome in ("completed", "failed", "cancelled"):
            fig.add_bar(
                x=daily["day"],
                y=daily[outcome],
                name=plotly_label(outcome),
                marker_color=OUTCOME_COLORS[outcome],
                hovertemplate="%{x|%Y-%m-%d}: %{y:,} " + outcome + "<extra></extra>",
            )
        fig.add_scatter(
            x=daily["day"],
            y=daily["created"],
            name="Created",
            mode="lines",
            line={"color": OUTCOME_COLORS["created"], "width": 2, "dash": "dot"},
            hovertemplate="%{x|%Y-%m-%d}: %{y:,} created<extra></extra>",
        )
        layout(
            fig,
            "Workflows finished per day, by outcome (line: created)",
            "Day (UTC)",
            "Workflows per day",
            barmode="stack",
        )
        st.plotly_chart(fig, key="stats_throughput_chart")
    freshness(stats, "stats_daily_throughput")
    download(table, "throughput_by_day")


def methodology_chart(stats: Any) -> tuple[pd.DataFrame, str]:
    """The chart; its CSV (rows and file name) is for the caller to offer below the row."""
    st.subheader("Outcome by methodology", anchor=False)
    table = pd.DataFrame(stats.methodology_outcomes)
    if table.empty:
        st.info("No workflows yet.", icon=":material/inbox:")
    else:
        table = table.sort_values("total")
        names = table["methodology"].map(plotly_label)
        fig = go.Figure()
        for outcome in ("completed", "failed", "cancelled", "open"):
            fig.add_bar(
                y=names,
                x=table[outcome],
                name=plotly_label(outcome),
                orientation="h",
                marker_color=OUTCOME_COLORS[outcome],
                hovertemplate="%{y}: %{x:,} " + outcome + "<extra></extra>",
            )
        layout(fig, "Workflows by methodology and outcome (all time)", "Workflows", "", barmode="stack")
        st.plotly_chart(fig, key="stats_methodology_chart")
    freshness(stats, "stats_methodology_outcomes")
    return table, "outcome_by_methodology"


def duration_charts(stats: Any) -> None:
    st.subheader("How long things take", anchor=False)
    workflows = pd.DataFrame(stats.methodology_outcomes)
    tasks = pd.DataFrame(stats.task_kinds)
    left, right = st.columns(2)
    with left:
        shown = workflows.dropna(subset=["median_duration_seconds"]) if not workflows.empty else workflows
        if shown.empty:
            st.info("No completed workflows yet, so no durations.", icon=":material/timer:")
        else:
            per, unit = duration_unit(shown["p90_duration_seconds"])
            fig = go.Figure()
            fig.add_bar(
                x=shown["methodology"].map(plotly_label),
                y=shown["median_duration_seconds"] / per,
                name="Median",
                marker_color="#1F6F78",
                hovertemplate="%{x}: median %{y:.1f} " + unit + "<extra></extra>",
            )
            fig.add_bar(
                x=shown["methodology"].map(plotly_label),
                y=shown["p90_duration_seconds"] / per,
                name="90th percentile",
                marker_color="#9DB8BB",
                hovertemplate="%{x}: 90%% within %{y:.1f} " + unit + "<extra></extra>",
            )
            layout(
                fig,
                "Time to complete a workflow, by methodology",
                "Methodology",
                f"Duration ({unit})",
                barmode="group",
            )
            st.plotly_chart(fig, key="stats_workflow_duration_chart")
        freshness(stats, "stats_methodology_outcomes")
    with right:
        shown = tasks.dropna(subset=["p50_duration_seconds"]) if not tasks.empty else tasks
        if shown.empty:
            st.info("No completed tasks yet, so no durations.", icon=":material/timer:")
        else:
            per, unit = duration_unit(shown["p90_duration_seconds"])
            fig = go.Figure()
            fig.add_bar(
                x=shown["kind"].map(plotly_label),
                y=shown["p50_duration_seconds"] / per,
                name="Median",
                marker_color="#1F6F78",
                hovertemplate="%{x}: median %{y:.1f} " + unit + "<extra></extra>",
            )
            fig.add_bar(
                x=shown["kind"].map(plotly_label),
                y=shown["p90_duration_seconds"] / per,
                name="90th percentile",
                marker_color="#9DB8BB",
                hovertemplate="%{x}: 90%% within %{y:.1f} " + unit + "<extra></extra>",
            )
            layout(
                fig, "Time to complete a task, by kind", "Task kind", f"Duration ({unit})", barmode="group"
            )
            st.plotly_chart(fig, key="stats_task_duration_chart")
        freshness(stats, "stats_task_kind")


def task_kind_chart(stats: Any) -> tuple[pd.DataFrame, str]:
    """The chart; its CSV (rows and file name) is for the caller to offer below the row."""
    st.subheader("Task failures and retries", anchor=False)
    table = pd.DataFrame(stats.task_kinds)
    if table.empty:
        st.info("No tasks yet.", icon=":material/inbox:")
    else:
        names = table["kind"].map(plotly_label)
        fig = go.Figure()
        fig.add_bar(
            x=names,
            y=table["failure_rate"].fillna(0) * 100,
            name="Failed (of finished tasks)",
            marker_color=OUTCOME_COLORS["failed"],
            customdata=table[["failed", "completed"]],
            hovertemplate="%{x}: %{y:.1f}% failed (%{customdata[0]:,} failed, %{customdata[1]:,} completed)"
            "<extra></extra>",
        )
        fig.add_bar(
            x=names,
            y=table["retry_rate"].fillna(0) * 100,
            name="Needed a retry (of started tasks)",
            marker_color="#B26A00",
            customdata=table[["retries"]],
            hovertemplate="%{x}: %{y:.1f}% retried (%{customdata[0]:,} retries)<extra></extra>",
        )
        layout(fig, "Failure and retry rate by task kind", "Task kind", "Share of tasks (%)", barmode="group")
        st.plotly_chart(fig, key="stats_task_kind_chart")
    freshness(stats, "stats_task_kind")
    return table, "task_kinds"


def assignee_chart(stats: Any) -> None:
    st.subheader("Assignee load", anchor=False)
    table = pd.DataFrame(stats.assignee_load)
    if table.empty:
        st.info("No tasks are assigned yet.", icon=":material/inbox:")
    else:
        top = table.head(TOP_ASSIGNEES).iloc[::-1]
        pending = top["open_tasks"] - top["running_tasks"]
        names = top["assignee"].map(ui.plotly_escape)  # people's names: Plotly would render markup in them
        fig = go.Figure()
        fig.add_bar(
            y=names,
            x=top["running_tasks"],
            name="Running",
            orientation="h",
            marker_color=OUTCOME_COLORS["running"],
            hovertemplate="%{y}: %{x:,} running<extra></extra>",
        )
        fig.add_bar(
            y=names,
            x=pending,
            name="Pending",
            orientation="h",
            marker_color=OUTCOME_COLORS["pending"],
            hovertemplate="%{y}: %{x:,} pending<extra></extra>",
        )
        layout(
            fig,
            f"Open tasks per assignee (top {min(TOP_ASSIGNEES, len(table))} of {len(table)})",
            "Open tasks",
            "",
            barmode="stack",
            height=max(320, 28 * len(top) + 140),
        )
        st.plotly_chart(fig, key="stats_assignee_chart")
    freshness(stats, "stats_assignee_load")
    download(table, "assignee_load")


st.title("Statistics")
st.caption(
    "From the statistics views over the read models. Throughput follows the date range; the other charts "
    "cover all time."
)
ui.stale_data_banner()

today = date.today()
range_col, _, refresh_col = st.columns([2, 1, 1.2], vertical_alignment="bottom")
picked = range_col.date_input(
    "Date range (UTC)",
    value=(today - timedelta(days=89), today),
    key="stats_range",
    format="YYYY-MM-DD",
    max_value=today + timedelta(days=1),
)
date_from = picked[0] if len(picked) >= 1 else today - timedelta(days=89)
date_to = picked[1] if len(picked) == 2 else date_from

refreshed_now = False
if ui.can("operator"):
    if refresh_col.button(
        "Refresh now",
        icon=":material/refresh:",
        key="stats_refresh",
        width="stretch",
        help="Recompute every statistics view from the read models now.",
    ):
        with st.spinner("Refreshing the statistics views…"):
            refreshed_now = (
                ui.run_command(ui.commands().refresh_statistics(), success="Statistics refreshed.")
                is not None
            )
else:
    refresh_col.button(
        "Refresh now",
        icon=":material/refresh:",
        key="stats_refresh",
        width="stretch",
        disabled=True,
        help="Refreshing the views is an operator action.",
    )
    st.caption(
        "Refreshing the views now is for operators; they refresh by themselves every "
        f"{ui.runtime().settings.view_refresh_seconds:.0f} s."
    )

stats = ui.run_query(
    ui.build(QueryFactory().get_statistics, date_from=date_from, date_to=date_to), cache=not refreshed_now
)
if stats is not None:
    if not (stats.methodology_outcomes or stats.task_kinds or stats.daily_throughput):
        st.info(
            "No statistics yet: create workflows on the New workflow page (or seed demo data on the Demo page). "
            "The views pick them up at their next refresh.",
            icon=":material/inbox:",
        )
    throughput_chart(stats, date_from, date_to)
    left, right = st.columns(2)
    with left:
        methodology = methodology_chart(stats)
    with right:
        kinds = task_kind_chart(stats)
    # Below both charts, in a row that wraps: in a half-width column at 1024 px the label
    # "Download outcome_by_methodology.csv" was cut.
    with ui.wrapping_row():
        download(*methodology)
        download(*kinds)
    duration_charts(stats)
    assignee_chart(stats)
