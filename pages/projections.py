"""Projections: the operator's console. Where each projection is in the log and how far behind,
its live lag, the controls to pause, resume and rebuild it, the parked events waiting for a
decision, and how fresh the statistics views are."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from cqrs_core.app import live, ui
from cqrs_core.infra.errors import CQRSError
from cqrs_core.projections.engine.drift_findings import DriftFinding
from cqrs_core.projections.engine.manager import ProjectionStatus
from cqrs_core.read.queries import QueryFactory

ui.require_entry_point()

queries = QueryFactory()
user = ui.current_user()
can_operate = ui.can("operator")
NOT_ALLOWED = "Needs the operator role."
NOTICE = "projections.notice"  # the last refusal, shown until the next action

METRIC_WIDTH = 230  # px: a metric's value up to "1,234,567" and its label on one line

STATE_BADGES = {
    "running": ("green", ":material/play_circle:"),
    "catching_up": ("blue", ":material/fast_forward:"),
    "rebuilding": ("violet", ":material/construction:"),
    "paused": ("orange", ":material/pause_circle:"),
    "faulted": ("red", ":material/error:"),
    "stopped": ("gray", ":material/stop_circle:"),
}
STATE_COLORS = {
    "running": "#2E7D4F",
    "catching_up": "#1565C0",
    "rebuilding": "#6A1B9A",
    "paused": "#B26A00",
    "faulted": "#B3261E",
    "stopped": "#5F6368",
}

st.title("Projections")
st.caption(
    "Each projection folds the event log into its read model. Watch how far behind they are, "
    "and pause, resume or rebuild them."
)
if not can_operate:
    who = "Nobody is signed in" if user is None else f"You are signed in with the {user.role} role"
    st.info(
        f"{who}: you can watch, but pausing, resuming, rebuilding and handling parked events "
        "need the operator role.",
        icon=":material/lock:",
    )
if ui.runtime().scheduler is None:
    st.caption(
        ":material/info: This app process does not run the projections "
        f"(CQRS_PROJECTIONS_IN={ui.runtime().settings.projections_in}); a `cqrs-console worker` does, "
        "and it picks up pause, resume and rebuild requests."
    )


def operate(action: str, name: str) -> None:
    """Button callback: runs before the card redraws, so the card shows the new state. A refusal
    stays under NOTICE until the next action (live cards redraw every few seconds)."""
    factory, svc = ui.commands(), ui.service()
    make, done = {
        "pause": (factory.pause_projection, f"Paused {name}."),
        "resume": (factory.resume_projection, f"Resumed {name}."),
        "rebuild": (factory.rebuild_projection, f"Rebuild of {name} requested; the progress shows here."),
    }[action]
    ui.act(lambda: svc.execute_command(make(projection=name)), done, NOTICE)
    ui.refresh_live()


PARTITION_GRID_COLUMNS = {
    "Held by": st.column_config.TextColumn(
        help="host:pid of the worker holding the partition's lock; a free one is taken within seconds.",
        width=160,
    ),
    "Behind head": st.column_config.NumberColumn(
        help="Log positions between the partition's cursor and the head.", format="%d", width=90
    ),
    "Position": st.column_config.NumberColumn(format="%d", width=90),
    "Applied": st.column_config.NumberColumn(
        help="Events of its own streams applied.", format="%d", width=90
    ),
}
GRID_COLUMNS = {
    "Projection": st.column_config.TextColumn(width=130),
    "State": ui.label_column("State", STATE_COLORS, width=105),
    "Lag (events)": st.column_config.NumberColumn(
        help="Events written but not applied yet.", format="%d", width=90
    ),
    "Lag (s)": st.column_config.NumberColumn(
        help="Age of the oldest event not applied yet, in seconds.", format="%.1f", width=60
    ),
    "Parked": st.column_config.NumberColumn(
        help="Events that kept failing and wait for retry or discard.", format="%d", width=60
    ),
    "Runner": st.column_config.TextColumn(help="host:pid of the process running it.", width=110),
    "Events/s": st.column_config.NumberColumn(
        help="Events applied per second, from the latest lag sample.", format="%.1f", width=75
    ),
    "Position": st.column_config.NumberColumn(
        help="Last event applied (the checkpoint).", format="%d", width=85
    ),
    "Head": st.column_config.NumberColumn(help="Newest event in the log.", format="%d", width=85),
    "On failure": st.column_config.TextColumn(
        help="skip: park the event and go on; fault: stop in front of it.", width=85
    ),
    "Last error": st.column_config.TextColumn(width="large"),
}
# What an operator looks for first, in the order shown; they fit a 1024 px screen (ui.KEY_COLUMNS_WIDTH_BUDGET).
GRID_KEY_COLUMNS = ["Projection", "State", "Lag (events)", "Lag (s)", "Parked", "Runner"]


def badge_of(s: ProjectionStatus) -> tuple[str, str, str]:
    """What the card's badge says (label, colour, icon): a rebuild, running or waiting for a
    runner, shows as such, not as the live runner's state."""
    if s.state != "rebuilding" and s.rebuild_requested:
        return "rebuild requested", *STATE_BADGES["rebuilding"]
    color, icon = STATE_BADGES.get(s.state, ("gray", ":material/help:"))
    return s.state.replace("_", " "), color, icon


def rebuild_progress(s: ProjectionStatus) -> None:
    if s.state == "rebuilding":
        done, total = s.rebuild_done or 0, s.rebuild_total or 0
        rate = f" · {s.rebuild_events_per_second:,.0f} events/s" if s.rebuild_events_per_second else ""
        if total and done >= total:
            # Every event counted at the start is replayed; what is left (events written since, the
            # swap) has no count to estimate from, so no "ETA 0 s" that never moves.
            text = (
                f"Rebuilding: all {done:,} events replayed{rate} · applying events written since "
                "and swapping the tables in"
            )
        else:
            seconds = s.rebuild_eta_seconds
            eta = (
                ""
                if seconds is None
                else " · ETA under 1 s"
                if seconds < 1
                else f" · ETA {ui.duration(seconds)}"
            )
            text = f"Rebuilding: {done:,} of {total:,} events{rate}{eta}"
        st.progress(min(1.0, done / total) if total else 0.0, text=text)
    elif s.rebuild_requested:
        st.progress(0.0, text="Rebuild requested; waiting for a projection runner to start it.")
    elif s.rebuild_interrupted:
        st.warning(
            "A rebuild stopped part-way; the live tables are untouched. Rebuild again to resume it.",
            icon=":material/warning:",
        )
    if s.rebuild_error:
        st.error("The last rebuild failed:", icon=":material/error:")
        st.code(s.rebuild_error, language=None, wrap_lines=True)


TREND_ICONS = {
    "rising": ":material/trending_up:",
    "falling": ":material/trending_down:",
    "flat": ":material/trending_flat:",
    "unknown": ":material/more_horiz:",
}
TREND_HELP = (
    f"From the lag samples of the last {live.TREND_MINUTES:g} minute: the direction of the lag, "
    "and, when behind, when it reaches zero at the rate it falls."
)


def controls(s: ProjectionStatus, trend: live.LagTrend | None) -> None:
    label, color, icon = badge_of(s)
    with st.container(border=True):
        # One row that wraps as a whole (name, badge, lag, then the buttons) instead of columns
        # that shrink: at 1024 px the columns cut names mid-word and buttons to "P.".
        row = st.container(horizontal=True, vertical_alignment="center", gap="medium")
        row.markdown(f"**{s.name}**", width="content")
        row.badge(label, icon=icon, color=color)
        row.caption(f"{s.lag_events:,} events · {s.lag_seconds:.1f} s behind", width="content", wrap=False)
        row.space("stretch")
        paused = s.state == "paused" or s.desired_state == "paused"
        busy = s.state == "rebuilding" or s.rebuild_requested
        row.button(
            "Pause",
            key=f"projections.pause.{s.name}",
            icon=":material/pause:",
            disabled=not can_operate or paused,
            on_click=operate,
            args=("pause", s.name),
            help=NOT_ALLOWED
            if not can_operate
            else "Stop applying events after the current batch; the read model keeps serving.",
        )
        row.button(
            "Resume",
            key=f"projections.resume.{s.name}",
            icon=":material/play_arrow:",
            disabled=not can_operate or not (paused or s.state == "faulted"),
            on_click=operate,
            args=("resume", s.name),
            help=NOT_ALLOWED
            if not can_operate
            else "Apply events again (a faulted projection retries the event it stopped at).",
        )
        row.button(
            "Rebuild",
            key=f"projections.rebuild.{s.name}",
            icon=":material/construction:",
            disabled=not can_operate or busy,
            on_click=operate,
            args=("rebuild", s.name),
            help=NOT_ALLOWED
            if not can_operate
            else "Replay the whole log into shadow tables and swap them in; the live tables keep serving.",
        )
        if trend is not None:
            icon = TREND_ICONS[trend.direction]
            st.caption(f"{icon} {trend.sentence}", help=TREND_HELP)
        rebuild_progress(s)
        if s.state == "faulted" and s.last_error:
            st.caption(
                "Stopped in front of an event it cannot apply — retry or discard it under Parked events."
            )


@st.fragment(run_every=live.PROJECTIONS_SECONDS)
def console_card() -> None:
    ui.show_toasts()
    snapshot = ui.live_board().projections(ui.live_since())
    card = ui.live_value(snapshot)
    if card is None:
        return
    if st.session_state.get(NOTICE):
        st.error(ui.md_escape(st.session_state[NOTICE]), icon=":material/block:")

    worst = card.largest_lag
    # Metrics of a fixed width in a row that wraps: four equal columns cut "78,123" to "78,1…" at 1024 px.
    metrics = st.container(horizontal=True, gap="small")
    metrics.metric(
        "Head position", f"{card.head:,}", help="Newest event in the log.", border=True, width=METRIC_WIDTH
    )
    metrics.metric(
        "Largest lag",
        "—" if worst is None else f"{worst.lag_seconds:.1f} s",
        help="Age of the oldest event some projection has not applied yet.",
        border=True,
        width=METRIC_WIDTH,
    )
    metrics.metric(
        "Parked events",
        f"{card.parked:,}",
        help="Events waiting for retry or discard.",
        border=True,
        width=METRIC_WIDTH,
    )
    metrics.metric("Running", f"{card.running} of {len(card.statuses)}", border=True, width=METRIC_WIDTH)

    st.dataframe(
        card.grid,
        placeholder=ui.MISSING,
        hide_index=True,
        column_config=GRID_COLUMNS,
        column_order=list(GRID_COLUMNS),
        key="projections.grid",
    )
    if card.head == 0:
        st.info(
            "The log is empty, so there is nothing to project yet — create a workflow or seed demo data "
            "on the Demo page.",
            icon=":material/inbox:",
        )
    if card.partitions is not None:
        st.markdown("**Partitions** — which worker holds each partition of a split projection")
        st.dataframe(
            card.partitions,
            placeholder=ui.MISSING,
            hide_index=True,
            column_config=PARTITION_GRID_COLUMNS,
            key="projections.partitions",
        )
    for s in card.statuses:
        controls(s, card.trends.get(s.name))
    st.caption(f"Updated {ui.clock(snapshot.taken_at)} · every {live.PROJECTIONS_SECONDS} seconds")


@st.fragment(run_every=live.PROJECTIONS_SECONDS)
def lag_card() -> None:
    st.subheader("Lag over time")
    measure_col, window_col = st.columns([3, 1])
    measure = measure_col.segmented_control(
        "Measure", list(live.LAG_MEASURES), default="Lag (events)", key="lag.measure", required=True
    )
    minutes = window_col.selectbox(
        "Window", (5, 15, 60), index=1, key="lag.minutes", format_func=lambda m: f"last {m} minutes"
    )
    chart = ui.live_value(ui.live_board().lag_chart(measure or "Lag (events)", minutes, ui.live_since()))
    if chart is None:
        return
    if not chart.samples:
        st.info(
            "No lag samples yet. A projection runner (this app with CQRS_RUN_PROJECTIONS=true, or "
            "`cqrs-console worker`) writes one per projection every second.",
            icon=":material/show_chart:",
        )
        return
    st.vega_lite_chart(chart.data, chart.spec, key="lag.chart")
    st.caption(
        f"{chart.samples:,} samples · newest {ui.clock(chart.newest)} · "
        f"every {live.PROJECTIONS_SECONDS} seconds"
    )


PARKED_NOTICE = "parked.notice"


def parked_label(event) -> str:
    return f"#{event.id} · {event.projection} · {event.event_type} at position {event.position}"


def handle_parked(verb: str, every: list[int] | None = None) -> None:
    """Button callback: retry or discard the chosen parked events (or `every` listed one), then
    say how many were settled and how many failed again."""
    ids = every if every is not None else list(st.session_state.get("parked.chosen") or [])
    if not ids:
        return
    factory, svc = ui.commands(), ui.service()
    if verb == "discarded":
        done = ui.act(
            lambda: svc.execute_command(factory.discard_parked_events(ids=ids)), None, PARKED_NOTICE
        )
    else:
        done = ui.act(
            lambda: svc.execute_command(factory.retry_parked_events(ids=None if every is not None else ids)),
            None,
            PARKED_NOTICE,
        )
    ui.refresh_live()
    if not done:
        return
    st.session_state["parked.chosen"] = []
    still = {e.id for e in ui.run_query(queries.get_parked_events(), cache=False) or []} & set(ids)
    settled = len(ids) - len(still)
    if settled:
        ui.announce(f"{settled} parked event{'s' if settled != 1 else ''} {verb}.")
    if still:
        st.session_state[PARKED_NOTICE] = (
            f"{len(still)} event{'s' if len(still) != 1 else ''} failed again and "
            f"{'stay' if len(still) != 1 else 'stays'} parked (the Error column says why); discard "
            f"{'them' if len(still) != 1 else 'it'} if {'they' if len(still) != 1 else 'it'} can never apply."
        )


@st.fragment
def parked_card() -> None:
    ui.show_toasts()
    st.subheader("Parked events")
    st.caption(
        "Events a projection could not apply after its retries. Retry applies one again (after a fix); "
        "discard gives up on it and lets a faulted projection move past it."
    )
    if st.session_state.get(PARKED_NOTICE):
        st.warning(ui.md_escape(st.session_state[PARKED_NOTICE]), icon=":material/warning:")
    names = [s.name for s in (ui.run_query(queries.get_projection_status()) or [])]
    which, status_col, refresh = st.columns([2, 2, 1], vertical_alignment="bottom")
    projection = which.selectbox("Projection", ["All projections", *names], key="parked.projection")
    status = status_col.selectbox("Status", ("parked", "retried", "discarded"), key="parked.status")
    refresh.button("Refresh", key="parked.refresh", icon=":material/refresh:", width="stretch")
    events = ui.run_query(
        queries.get_parked_events(
            projection=None if projection == "All projections" else projection, status=status
        ),
        cache=False,
    )
    if events is None:
        return
    if not events:
        st.info(
            f"No {status} events. A poison event injected on the Demo page shows up here."
            if status == "parked"
            else f"No {status} events yet.",
            icon=":material/inventory_2:",
        )
        return
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "Id": e.id,
                    "Projection": e.projection,
                    "Position": e.position,
                    "Event type": e.event_type,
                    "Attempts": e.attempts,
                    "Parked at": e.parked_at,
                    "Error": e.error,
                    "Resolved at": e.resolved_at,
                }
                for e in events
            ]
        ).astype({"Parked at": "datetime64[us, UTC]", "Resolved at": "datetime64[us, UTC]"}),
        placeholder=ui.MISSING,
        hide_index=True,
        key="parked.table",
        column_config={
            "Parked at": ui.datetime_column("Parked at", "YYYY-MM-DD HH:mm:ss"),
            "Resolved at": ui.datetime_column("Resolved at", "YYYY-MM-DD HH:mm:ss"),
            "Error": st.column_config.TextColumn(width="large"),
        },
    )
    if status != "parked":
        return
    by_id = {e.id: e for e in events}
    chosen = st.multiselect(
        "Events to act on",
        list(by_id),
        format_func=lambda i: parked_label(by_id[i]),
        key="parked.chosen",
        placeholder="Choose parked events",
        disabled=not can_operate,
    )
    retry, discard, retry_all = st.columns(3)
    help_ = NOT_ALLOWED if not can_operate else None
    retry.button(
        "Retry selected",
        key="parked.retry",
        icon=":material/replay:",
        width="stretch",
        disabled=not can_operate or not chosen,
        help=help_,
        on_click=handle_parked,
        args=("retried",),
    )
    discard.button(
        "Discard selected",
        key="parked.discard",
        icon=":material/delete:",
        width="stretch",
        disabled=not can_operate or not chosen,
        help=help_,
        on_click=handle_parked,
        args=("discarded",),
    )
    retry_all.button(
        f"Retry all {len(events)}",
        key="parked.retry_all",
        icon=":material/replay:",
        width="stretch",
        disabled=not can_operate or projection != "All projections",
        on_click=handle_parked,
        args=("retried", list(by_id)),
        help=help_
        or (
            "Retries every parked event of every projection."
            if projection == "All projections"
            else "Choose All projections first."
        ),
    )


def refresh_views() -> None:
    factory, svc = ui.commands(), ui.service()
    ui.act(
        lambda: svc.execute_command(factory.refresh_statistics()),
        "Statistics views refreshed.",
        "views.notice",
    )
    ui.refresh_live()


@st.fragment(run_every=live.PROJECTIONS_SECONDS)
def views_card() -> None:
    """Live, like the cards above: the Age column counts up while the page is open."""
    ui.show_toasts()
    st.subheader("Statistics views")
    if st.session_state.get("views.notice"):
        st.error(ui.md_escape(st.session_state["views.notice"]), icon=":material/block:")
    try:
        views = ui.service().projections.view_freshness()
    except CQRSError as exc:
        ui.show_error(exc)
        return
    now = datetime.now(UTC)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "View": v.view_name,
                    "Last refreshed": v.refreshed_at,
                    "Age": ui.duration((now - v.refreshed_at).total_seconds()) if v.refreshed_at else "never",
                    "Took (ms)": v.duration_ms,
                    "Rows": v.row_count,
                }
                for v in views
            ]
        ),
        placeholder=ui.MISSING,
        hide_index=True,
        key="views.table",
        column_config={
            "Last refreshed": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
            "Took (ms)": st.column_config.NumberColumn(format="%.0f"),
        },
    )
    interval = ui.runtime().settings.view_refresh_seconds
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.caption(
        f"The scheduler refreshes the materialized views every {interval:g} s while projections run."
    )
    right.button(
        "Refresh now",
        key="views.refresh",
        icon=":material/refresh:",
        width="stretch",
        disabled=not can_operate,
        help=NOT_ALLOWED if not can_operate else None,
        on_click=refresh_views,
    )


def differences(finding: DriftFinding) -> str:
    """What a finding found, as plain text for a table cell: "title: expected 'A', found 'B'; ..."."""
    return "; ".join(f"{d.column}: expected {d.expected}, found {d.found}" for d in finding.details)


FINDING_COLUMNS = {
    "Projection": st.column_config.TextColumn(width=130),
    "Stream": st.column_config.TextColumn(width=220),
    "Columns": st.column_config.TextColumn(
        help="The columns whose live values differ from a replay.", width=160
    ),
    "Differences": st.column_config.TextColumn(
        help="What a replay of the stream expected and what the live row holds (cut short).", width="large"
    ),
}


@st.fragment
def verification_card() -> None:
    """Not live: a pass runs once a minute, and Refresh reads the latest."""
    st.subheader("Continuous verification")
    settings = ui.runtime().settings
    every = settings.verify_every_seconds
    st.caption(
        "Each pass replays the next sample of streams with the projections' own code and compares the "
        "result with the live rows; a round covers every stream. A stream written to since the replay "
        "is passed over and checked in a later round."
    )
    try:
        status = ui.service().projections.verification_status()
    except CQRSError as exc:
        ui.show_error(exc)
        return
    p = status.progress
    metrics = st.container(horizontal=True, gap="small")
    metrics.metric(
        "Last pass",
        ui.ago(p.last_pass_at) if p.last_pass_at else "not yet",
        help="When any process last finished a pass.",
        border=True,
        width=METRIC_WIDTH,
    )
    metrics.metric(
        "This round",
        f"{p.round_coverage:.0%}",
        help="Streams checked in the current round, of the workflows in the read model when it started.",
        border=True,
        width=METRIC_WIDTH,
    )
    metrics.metric("Rounds completed", f"{p.rounds_completed:,}", border=True, width=METRIC_WIDTH)
    metrics.metric(
        "Open findings",
        f"{status.open_findings:,}",
        help="Streams whose live rows differ from a replay of their events.",
        border=True,
        width=METRIC_WIDTH,
    )
    round_line = (
        f"Round started {ui.when(p.round_started_at)}: {p.round_checked:,} of {p.round_total:,} streams "
        f"checked, {p.round_skipped:,} passed over."
        if p.round_started_at
        else "No round started yet."
    )
    last_line = (
        f" Last pass: {p.last_pass_checked or 0:,} streams checked, {p.last_pass_skipped or 0:,} passed over, "
        f"{p.last_pass_events or 0:,} events replayed in {p.last_pass_ms or 0:,.0f} ms."
        if p.last_pass_ms is not None
        else ""
    )
    schedule = (
        f" A pass runs every {every:g} s over at least {settings.verify_sample_streams:,} streams or "
        f"{settings.verify_sample_percent:g} % of the workflows, at most {settings.verify_max_events:,} events."
        if every > 0
        else " Passes are off (CQRS_VERIFY_EVERY_SECONDS=0)."
    )
    st.caption(round_line + last_line + schedule)
    if p.last_pass_error:
        st.error(f"The last pass failed: {ui.md_escape(p.last_pass_error)}", icon=":material/error:")
    if status.findings:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "Projection": f.projection,
                        "Stream": f.stream_id,
                        "Columns": ", ".join(f.columns),
                        "Found at": f.found_at,
                        "Last seen": f.seen_at,
                        "Differences": differences(f),
                    }
                    for f in status.findings
                ]
            ).astype({"Found at": "datetime64[us, UTC]", "Last seen": "datetime64[us, UTC]"}),
            placeholder=ui.MISSING,
            hide_index=True,
            key="verification.findings",
            column_config={
                **FINDING_COLUMNS,
                "Found at": ui.datetime_column("Found at", "YYYY-MM-DD HH:mm:ss"),
                "Last seen": ui.datetime_column("Last seen", "YYYY-MM-DD HH:mm:ss"),
            },
        )
        st.caption(
            "A finding resolves by itself when a later pass finds its stream right again; rebuild the "
            "projection to put its rows right."
        )
    elif p.last_pass_at:
        st.success(
            "No open drift findings: every stream checked matched its replay.", icon=":material/verified:"
        )
    st.button("Refresh", key="verification.refresh", icon=":material/refresh:")


ui.refresh_live()
console_card()
lag_card()
parked_card()
views_card()
verification_card()
