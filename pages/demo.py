"""Demo: for presentations. Fill the console with realistic research workflows, put it under a
live load, break a projection on purpose and show it recover, and start again from nothing.
Every action here needs the operator role; the work runs in cqrs_core.app.demo's background threads
and this page only polls their progress."""

from __future__ import annotations

import streamlit as st

from cqrs_core.app import live, ui
from cqrs_core.app.demo import MAX_LOAD_RATE, demo_controller
from cqrs_core.infra.errors import CQRSError
from cqrs_core.read.queries import QueryFactory

ui.require_entry_point()

queries = QueryFactory()
user = ui.current_user()
can_operate = ui.can("operator")
role = user.role if user is not None else "analyst"
actor = user.name if user is not None else None
controller = demo_controller(ui.service())
NOT_ALLOWED = "Needs the operator role."
SIZES = {"Small": 100, "Medium": 1_000, "Large": 10_000}
RESET_WORD = "RESET"

st.title("Demo")
st.caption(
    "For presentations: fill the console with realistic research workflows, put it under load, "
    "break a projection on purpose and show it recover — then start again from nothing."
)
if not can_operate:
    st.info(
        "Presenter actions need the operator role; you can watch what is running.", icon=":material/lock:"
    )


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


ui.show_toasts()
ui.refresh_live()


# ---------------------------------------------------------------- seed


# Whether the Seed button was last drawn disabled because a seed was running: the button is
# drawn by the full run, this fragment reruns alone, so it asks for a full run once the seed ends.
SEED_BUTTON_WAITS = "demo.seed_button_waits"


@st.fragment(run_every="1s")
def seed_progress() -> None:
    snap = controller.seeding.snapshot()
    if not snap.running and st.session_state.get(SEED_BUTTON_WAITS):
        st.session_state[SEED_BUTTON_WAITS] = False
        st.rerun(scope="app")  # redraws the Seed button enabled
    if snap.seed is None:
        st.caption("No seed has run in this app process yet.")
        return
    if snap.running:
        eta = f" · ETA {ui.duration(snap.eta_seconds)}" if snap.eta_seconds is not None else ""
        st.progress(
            snap.fraction,
            text=f"Seeding: {snap.done:,} of {snap.total:,} workflows · {snap.commands:,} commands{eta}",
        )
        return
    if snap.failure:
        st.error(ui.md_escape(snap.failure), icon=":material/error:")
        return
    report = snap.report
    if report is None:
        return
    st.progress(1.0, text=f"Seeded {report.workflows:,} workflows")
    outcomes = ", ".join(f"{n:,} {outcome}" for outcome, n in report.outcomes.most_common())
    st.success(
        f"Seeded {report.workflows:,} workflows with seed {snap.seed}: {report.commands:,} commands and "
        f"{report.events:,} events in {report.seconds:.1f} s ({report.commands_per_second:,.0f} commands/s). "
        f"Lifecycles: {outcomes}.",
        icon=":material/check_circle:",
    )
    if report.duplicates:
        st.caption(f"{report.duplicates:,} commands had already run with this seed and were skipped.")
    if report.failed_workflows:
        st.warning(
            f"{report.failed_workflows:,} workflows stopped at a refused command.", icon=":material/warning:"
        )


def seed_size() -> int:
    return SIZES[st.session_state.get("seed.size") or "Small"]


with st.container(border=True):
    st.subheader("Seed a data set")
    st.caption(
        "Realistic workflows with back-filled lifecycles (completed, retried, failed, cancelled, still "
        "running) spread over the last days, sent through the command bus like any user's commands."
    )
    # A row that wraps: in two thirds of the card, "Large · 10,000 workflows" was cut at 1024 px.
    with ui.wrapping_row():
        size = st.segmented_control(
            "Size",
            list(SIZES),
            default="Small",
            key="seed.size",
            required=True,
            format_func=lambda s: f"{s} · {SIZES[s]:,} workflows",
        )
        days = st.number_input(
            "Spread over the last (days)",
            min_value=1,
            max_value=365,
            value=90,
            step=1,
            key="seed.days",
            width=200,
        )
    workflows = SIZES[size or "Small"]
    st.session_state[SEED_BUTTON_WAITS] = controller.seeding.running
    st.button(
        "Seed",
        key="seed.start",
        type="primary",
        icon=":material/add_circle:",
        disabled=not can_operate or controller.seeding.running,
        help=None if can_operate else NOT_ALLOWED,
        # Callbacks read the widgets' current values: a value typed just before the click
        # is in session_state, while the locals here are from the previous run.
        on_click=ui.act_in_place,
        args=(
            lambda: controller.seed(
                seed_size(), role=role, days=float(st.session_state["seed.days"]), actor=actor
            ),
            lambda _r: f"Seeding {seed_size():,} workflows in the background.",
            "seed.error",
        ),
    )
    ui.show_outcome("seed.error")
    seed_progress()


# ---------------------------------------------------------------- live load


@st.fragment(run_every="1s")
def load_status() -> None:
    snap = controller.load.snapshot()
    if not snap.running and not snap.commands and not snap.errors:
        st.caption("No live load is running.")
        return
    errors = sum(snap.errors.values())
    a, b, c, d = st.columns(4)
    a.metric(
        "Commands now",
        f"{snap.recent_rate:,.1f}/s" if snap.running else "stopped",
        help=f"Successful commands per second over the last few seconds; target {snap.target_rate:g}/s.",
        border=True,
    )
    b.metric("Commands sent", f"{snap.commands:,}", border=True)
    c.metric(
        "Refused",
        f"{errors:,}",
        help=", ".join(f"{n} {cat}" for cat, n in snap.errors.items()) or None,
        border=True,
    )
    d.metric("Running for", ui.duration(snap.elapsed_seconds), border=True)
    if snap.failure:
        st.error(ui.md_escape(snap.failure), icon=":material/error:")
    elif snap.running:
        st.caption(
            f"Target {snap.target_rate:g} commands/s on {snap.threads} threads · average so far "
            f"{snap.achieved_rate:,.1f}/s. Watch the lag on the Projections page."
        )
    else:
        st.caption(f"Stopped after {snap.commands:,} commands ({snap.achieved_rate:,.1f}/s on average).")


with st.container(border=True):
    st.subheader("Live load")
    st.caption(
        "New workflows and their tasks, started, completed, failed and retried as people would, at a "
        "steady rate, through this app's command bus (the System page counts them)."
    )
    running = controller.load.running
    rate_col, start_col, stop_col = st.columns([2, 1, 1], vertical_alignment="bottom")
    rate = rate_col.number_input(
        "Commands per second",
        min_value=1,
        max_value=int(MAX_LOAD_RATE),
        value=20,
        step=5,
        key="load.rate",
        disabled=running,
    )
    start_col.button(
        "Start",
        key="load.start",
        icon=":material/play_arrow:",
        type="primary",
        width="stretch",
        disabled=not can_operate or running,
        help=None if can_operate else NOT_ALLOWED,
        on_click=ui.act_in_place,
        args=(
            lambda: controller.start_load(float(st.session_state["load.rate"]), role=role, actor=actor),
            lambda _r: f"Live load started at {st.session_state['load.rate']:g} commands/s.",
            "load.error",
        ),
    )
    stop_col.button(
        "Stop",
        key="load.stop",
        icon=":material/stop:",
        width="stretch",
        disabled=not can_operate or not running,
        help=None if can_operate else NOT_ALLOWED,
        on_click=ui.act_in_place,
        args=(
            lambda: controller.stop_load(role=role, actor=actor),
            lambda s: f"Live load stopped after {s.commands:,} commands.",
            "load.error",
        ),
    )
    ui.show_outcome("load.error")
    load_status()


# ---------------------------------------------------------------- fault and recovery


@st.fragment(run_every=live.PROJECTIONS_SECONDS)
def lag_watch(name: str) -> None:
    board, since = ui.live_board(), ui.live_since()
    card = ui.live_value(board.projections(since))
    status = next((s for s in card.statuses if s.name == name), None) if card is not None else None
    if status is None:
        return
    a, b, c = st.columns(3)
    a.metric("State", status.state.replace("_", " "), border=True)
    b.metric("Lag", plural(status.lag_events, "event"), border=True)
    c.metric("Behind by", f"{status.lag_seconds:.1f} s", border=True)
    chart = ui.live_value(board.projection_lag_chart(name, 5, since))
    if chart is not None and chart.samples >= 2:
        st.vega_lite_chart(chart.data, chart.spec, key="demo.lag_chart")
    else:
        st.caption("The lag chart appears once a projection runner has written a few lag samples.")


def discard_fault(ids: list[int]) -> None:
    """Button callback: discard the poison event's parked copies."""
    ui.act_in_place(
        lambda: ui.service().execute_command(ui.commands().discard_parked_events(ids=ids)),
        "Discarded the poison event; the projections move past it.",
        "fault.error",
    )
    ui.refresh_live()


@st.fragment(run_every=live.PROJECTIONS_SECONDS)
def fault_watch() -> None:
    """The last injected fault: which projections parked it, and the button that recovers."""
    ui.show_outcome("fault.error", keep=True)
    fault = controller.last_fault
    if fault is None:
        return
    st.caption(
        f"Last fault: position {fault.position:,}, {fault.event_type}, correlation id "
        f"`{fault.correlation_id}`."
    )
    parked = [
        p
        for p in ui.live_value(ui.live_board().parked(ui.live_since())) or []
        if p.position == fault.position
    ]
    if not parked:
        st.caption("No projection has parked it (yet, or any more).")
        return
    st.warning(f"Parked by {', '.join(sorted(p.projection for p in parked))}.", icon=":material/report:")
    link, recover = st.columns(2, vertical_alignment="center")
    link.page_link(
        "pages/projections.py", label="See it on the Projections page", icon=":material/arrow_forward:"
    )
    ids = [p.id for p in parked]
    recover.button(
        "Recover: discard it",
        key="fault.discard",
        icon=":material/healing:",
        width="stretch",
        disabled=not can_operate,
        help=None if can_operate else NOT_ALLOWED,
        on_click=discard_fault,
        args=(ids,),
    )


with st.container(border=True):
    st.subheader("Break it, then recover")
    fault_col, pause_col = st.columns(2)
    with fault_col:
        st.markdown("**Inject a poison event**")
        st.caption(
            "Appends an event no projection can apply (a task started in a workflow that never existed). "
            "Projections that skip park it and go on; workflow_summary stops in front of it (faulted) "
            "until you discard it under Parked events."
        )
        st.button(
            "Inject a poison event",
            key="fault.inject",
            icon=":material/coronavirus:",
            disabled=not can_operate,
            help=None if can_operate else NOT_ALLOWED,
            on_click=ui.act_in_place,
            args=(
                lambda: controller.inject_poison_event(actor=user.name, role=role),
                lambda e: f"Injected a poison event at position {e.position:,}.",
                "fault.error",
            ),
        )
        fault_watch()
    with pause_col:
        st.markdown("**Pause a projection**")
        st.caption(
            "While it is paused, new events pile up and its lag grows; resume it and watch it catch up."
        )
        names = [s.name for s in (ui.run_query(queries.get_projection_status()) or [])]
        name = st.selectbox("Projection", names, key="pause.projection") if names else None
        pause_btn, resume_btn = st.columns(2)
        factory = ui.commands() if user is not None else None
        if pause_btn.button(
            "Pause",
            key="pause.pause",
            icon=":material/pause:",
            width="stretch",
            disabled=not can_operate or name is None,
            help=None if can_operate else NOT_ALLOWED,
        ):
            if ui.run_command(ui.build(factory.pause_projection, projection=name)):
                st.success(f"Paused {name}.", icon=":material/check_circle:")
        if resume_btn.button(
            "Resume",
            key="pause.resume",
            icon=":material/play_arrow:",
            width="stretch",
            disabled=not can_operate or name is None,
            help=None if can_operate else NOT_ALLOWED,
        ):
            if ui.run_command(ui.build(factory.resume_projection, projection=name)):
                st.success(f"Resumed {name}.", icon=":material/check_circle:")
    if name is not None:
        lag_watch(name)


# ---------------------------------------------------------------- reset


can_reset = ui.can("admin")
RESET_NOT_ALLOWED = "Resetting needs an admin."


def reset_everything() -> None:
    """Button callback (runs before the page redraws, so the confirmation box can be emptied)."""
    try:
        summary = controller.reset(role=role, actor=user.name if user is not None else None)
    except CQRSError as exc:
        st.session_state["reset.outcome"] = ("error", exc.user_message)
        return
    st.session_state["reset.confirm"] = ""
    stopped = " The live load was stopped first." if summary.stopped_load else ""
    st.session_state["reset.outcome"] = (
        "success",
        f"Deleted {summary.events:,} events and {summary.commands:,} commands and emptied "
        f"{summary.tables} tables; every projection starts again from the beginning of the log.{stopped}",
    )


with st.container(border=True):
    st.subheader("Reset everything")
    st.caption(
        "Deletes every event, every command and every read-model row, stops the live load, and puts every "
        "projection back at the start of the log. This cannot be undone."
    )
    confirm_col, button_col = st.columns([2, 1], vertical_alignment="bottom")
    typed = confirm_col.text_input(
        f"Type {RESET_WORD} to confirm", key="reset.confirm", disabled=not can_reset
    )
    confirmed = typed.strip() == RESET_WORD
    button_col.button(
        "Reset everything",
        key="reset.run",
        icon=":material/delete_forever:",
        width="stretch",
        disabled=not can_reset or not confirmed,
        on_click=reset_everything,
        help=RESET_NOT_ALLOWED if not can_reset else (None if confirmed else f"Type {RESET_WORD} first."),
    )
    if not can_reset:
        st.caption(f"{RESET_NOT_ALLOWED} Every reset is recorded with who asked for it.")
    outcome = st.session_state.pop("reset.outcome", None)
    if outcome is not None:
        kind, message = outcome
        if kind == "success":
            st.success(message, icon=":material/check_circle:")
        else:
            st.error(message, icon=":material/error:")
    elif typed and not confirmed:
        st.caption(f"Type {RESET_WORD} exactly, in capitals, to enable the button.")
