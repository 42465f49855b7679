"""The Workflows page's detail of one workflow (`?workflow=<id>`): its summary, the actions its
state allows, its tasks (and their actions), its paged timeline and its paged raw event stream.

Only the actions the current state allows are offered, as the core's rules say
(`allowed_actions`, `allowed_task_actions`, `may_change` and the rules on top of them); the core
checks them again when the command arrives, so a refusal is shown as one sentence."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any, get_args

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.app.screens import workflow_pictures
from cqrs_core.domain.events import EstimateConfidence, stream_id_for
from cqrs_core.domain.vocabulary import OPEN_TASK_STATUSES, TASK_KINDS, TERMINAL_WORKFLOW_STATUSES
from cqrs_core.domain.workflow import (
    allowed_actions,
    allowed_task_actions,
    may_change,
    may_depend_on,
    may_retry,
    unfinished_dependencies,
)
from cqrs_core.read.queries import ACTIVITY_PAGE_SIZE, QueryFactory

Q = QueryFactory()
CANCEL_REASON = "Reason for cancelling"  # the field's label, and the words its error uses
ESTIMATE_CONFIDENCES: tuple[str | None, ...] = (None, *get_args(EstimateConfidence))
EVENT_PAGE = 100  # a workflow's event stream is shown a page at a time (its timeline: ACTIVITY_PAGE_SIZE)


def send(command_factory: Callable[..., Any], success: str, **fields: Any) -> None:
    """Send one command for this workflow, from the script run a button or form submit caused
    (not from a callback, unlike `ui.act`): a refusal is drawn where the button is; on success
    the page shows again, with `success` as a toast, from the read model that includes the
    command (`ui.run_command` remembers its position, and the rerun reads with read-your-writes)."""
    command = ui.build(command_factory, **fields)
    if ui.run_command(command) is not None:
        # Queued, not drawn: a toast drawn just before st.rerun() can be lost with the run it was
        # sent from; the page shows the queue at the top of the next run.
        ui.announce(success)
        st.rerun()


def workflow_actions(wf: dict[str, Any], may_act: bool) -> None:
    status, wid = wf["status"], str(wf["workflow_id"])
    actions = allowed_actions(status)
    if status in TERMINAL_WORKFLOW_STATUSES:
        st.caption(f"This workflow is {status}; nothing more can happen to it.")
        return
    if not may_act:
        st.caption(f"Only its owner ({ui.md_escape(wf['owner'])}) or an admin can change this workflow.")
        return
    c = ui.commands()
    open_tasks = wf["task_total"] - wf["task_completed"] - wf["task_cancelled"]
    buttons = st.container(horizontal=True)
    if "start" in actions and buttons.button(
        "Start workflow", type="primary", icon=":material/play_arrow:", key="wf_act_start"
    ):
        send(c.start_workflow, "Workflow started.", workflow_id=wid)
    if "resume" in actions and buttons.button(
        "Resume", type="primary", icon=":material/play_arrow:", key="wf_act_resume"
    ):
        send(c.resume_workflow, "Workflow resumed.", workflow_id=wid)
    if "pause" in actions:
        with buttons.popover("Pause…", icon=":material/pause:", key="wf_act_pause_menu"):
            reason = st.text_input("Why (optional)", key="wf_act_pause_reason", max_chars=500)
            if st.button("Pause workflow", key="wf_act_pause"):
                send(c.pause_workflow, "Workflow paused.", workflow_id=wid, reason=reason.strip() or None)
    if "complete" in actions:
        with buttons.popover("Complete…", icon=":material/task_alt:", key="wf_act_complete_menu"):
            if open_tasks:
                st.caption(
                    f"{open_tasks} task(s) are not completed. Say why you complete it anyway "
                    "(only the owner can)."
                )
            reason = st.text_input(
                "Reason" + ("" if open_tasks else " (optional)"), key="wf_act_complete_reason", max_chars=500
            )
            if st.button("Complete workflow", key="wf_act_complete", type="primary"):
                send(
                    c.complete_workflow, "Workflow completed.", workflow_id=wid, reason=reason.strip() or None
                )
    if "fail" in actions:
        with buttons.popover("Fail…", icon=":material/error:", key="wf_act_fail_menu"):
            reason = st.text_input("What went wrong", key="wf_act_fail_reason", max_chars=500)
            if st.button("Mark workflow failed", key="wf_act_fail"):
                send(c.fail_workflow, "Workflow marked failed.", workflow_id=wid, reason=reason)
    if "cancel" in actions:
        with buttons.popover("Cancel…", icon=":material/cancel:", key="wf_act_cancel_menu"):
            st.caption("Cancelling also cancels its open tasks. It cannot be undone.")
            reason = st.text_input(CANCEL_REASON, key="wf_act_cancel_reason", max_chars=500, required=True)
            if st.button("Cancel workflow", key="wf_act_cancel"):
                if reason.strip():
                    send(c.cancel_workflow, "Workflow cancelled.", workflow_id=wid, reason=reason)
                else:  # said in the field's own words, not the command's ("reason: must not be blank")
                    st.error(
                        f"Nothing was cancelled: fill in “{CANCEL_REASON}” first.", icon=":material/error:"
                    )


def task_table(tasks: list[dict[str, Any]]) -> pd.DataFrame:
    names = {str(t["task_id"]): t["name"] for t in tasks}
    return pd.DataFrame(
        [
            {
                "task_id": str(t["task_id"]),
                "name": t["name"],
                "kind": ui.label(t["kind"]),
                "assignee": t["assignee"],
                "status": t["status"],
                "attempts": t["attempts"],
                "estimate": t["estimate_minutes"],
                "confidence": (t.get("estimate_confidence") or "").capitalize() or None,
                "depends_on": [names.get(str(d), str(d)) for d in (t.get("depends_on") or [])],
                "duration": ui.duration(t["duration_seconds"])
                if t.get("duration_seconds") is not None
                else None,
                "result": t.get("result_summary"),
                "error": t.get("last_error"),
            }
            for t in tasks
        ]
    )


# The task table's columns, in order. What a person follows a task by comes first, each with a
# fixed width, so that it is on screen at 1024 px (ui.KEY_COLUMNS_WIDTH_BUDGET); the rest follow
# and, at 1440 px, fit too (Took, Result and Last error ran off-screen behind the others).
TASK_KEY_COLUMNS = ["name", "status", "duration", "result", "error"]
TASK_COLUMNS = [*TASK_KEY_COLUMNS, "assignee", "kind", "attempts", "estimate", "confidence", "depends_on"]
TASK_COLUMN_CONFIG = {
    "name": st.column_config.TextColumn("Task", width=140),
    "status": st.column_config.TextColumn("Status", width=85),
    "duration": st.column_config.TextColumn("Took", width=70),
    "result": st.column_config.TextColumn("Result", width=130),
    "error": st.column_config.TextColumn("Last error", width=130),
    "assignee": st.column_config.TextColumn("Assignee", width=90),
    "kind": st.column_config.TextColumn("Kind", width=110),
    "attempts": st.column_config.NumberColumn("Attempts", format="%d", width=70),
    "estimate": st.column_config.NumberColumn("Estimate", format="%d min", width=75),
    "confidence": st.column_config.TextColumn("Confidence", width=90),
    "depends_on": st.column_config.ListColumn("Depends on", width=140),
}


def task_actions(
    wf: dict[str, Any], task: dict[str, Any], tasks: list[dict[str, Any]], may_act: bool
) -> None:
    wid, tid, status = str(wf["workflow_id"]), str(task["task_id"]), task["status"]
    st.markdown(f"**{ui.md_escape(task['name'])}** {ui.status_badge(status)}")
    if status not in OPEN_TASK_STATUSES:
        st.caption(f"This task is {status}; there is nothing more to do with it.")
        return
    if wf["status"] in TERMINAL_WORKFLOW_STATUSES:
        st.caption(
            f"This task is {status} and its workflow is {wf['status']}; nothing more can happen to it."
        )
        return
    if not may_act:
        st.caption(
            f"Only the workflow's owner ({ui.md_escape(wf['owner'])}) or an admin can work on its tasks."
        )
        return
    # Removing a pending task is not offered here; the other task actions need a running workflow.
    actions = allowed_task_actions(wf["status"], status) - {"remove_task"}
    if not actions:
        hint = {"draft": "Start the workflow first.", "paused": "Resume the workflow first."}.get(
            wf["status"], ""
        )
        st.caption(f"Tasks can be worked on while the workflow is running. {hint}")
        return
    c = ui.commands()
    if "start_task" in actions:
        by_id = {str(t["task_id"]): t for t in tasks}
        status_of = {task_id: t["status"] for task_id, t in by_id.items()}
        depends_on = [str(d) for d in (task.get("depends_on") or [])]
        waiting = [by_id[d]["name"] for d in unfinished_dependencies(depends_on, status_of)]
        if waiting:
            st.caption(
                "Waiting for " + ", ".join(f"“{ui.md_escape(n)}”" for n in waiting) + " to be completed."
            )
        elif st.button("Start task", type="primary", icon=":material/play_arrow:", key="wf_task_start"):
            send(c.start_task, "Task started.", workflow_id=wid, task_id=tid)
    elif "complete_task" in actions:
        done_col, fail_col = st.columns(2)
        with done_col.form("wf_task_complete_form", border=True):
            summary = st.text_area(
                "Result summary",
                key="wf_task_summary",
                max_chars=5000,
                height=80,
                placeholder="What did this task find or produce?",
            )
            if st.form_submit_button("Complete task", type="primary", icon=":material/task_alt:"):
                send(c.complete_task, "Task completed.", workflow_id=wid, task_id=tid, result_summary=summary)
        with fail_col.form("wf_task_fail_form", border=True):
            error = st.text_area("What went wrong", key="wf_task_error", max_chars=5000, height=80)
            if st.form_submit_button("Fail task", icon=":material/error:"):
                send(c.fail_task, "Task marked failed.", workflow_id=wid, task_id=tid, error=error)
    elif "retry_task" in actions:
        attempts, limit = task["attempts"], ui.runtime().settings.max_task_attempts
        if task.get("last_error"):
            st.caption("Last error:")
            st.text(task["last_error"])
        if not may_retry(attempts, limit):
            st.caption(f"It has used all {limit} attempts; it stays failed.")
        elif st.button(
            f"Retry (attempt {attempts + 1} of {limit})",
            type="primary",
            icon=":material/replay:",
            key="wf_task_retry",
        ):
            send(c.retry_task, "Task retried.", workflow_id=wid, task_id=tid)


def add_task_form(wf: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    wid = str(wf["workflow_id"])
    user = ui.current_user()
    names = {str(t["task_id"]): t["name"] for t in tasks if may_depend_on(t["status"])}
    with st.expander("Add a task", icon=":material/add:"):
        with st.form("wf_add_task", border=False):
            name_col, kind_col, who_col, est_col, conf_col = st.columns([2, 1, 1, 1, 1])
            name = name_col.text_input("Task", key="wf_add_name", max_chars=200)
            kind = kind_col.selectbox(
                "Kind",
                TASK_KINDS,
                index=TASK_KINDS.index("analysis"),
                format_func=ui.label,
                key="wf_add_kind",
            )
            assignee = who_col.text_input(
                "Assignee", value=user.name if user else "", key="wf_add_assignee", max_chars=100
            )
            estimate = est_col.number_input(
                "Estimate (min)", min_value=1, max_value=100_000, value=None, step=1, key="wf_add_estimate"
            )
            confidence = conf_col.selectbox(
                "Confidence",
                ESTIMATE_CONFIDENCES,
                format_func=lambda c: "Not said" if c is None else c.capitalize(),
                key="wf_add_confidence",
                help="How sure the estimate is (only with an estimate).",
            )
            depends_on = st.multiselect(
                "Depends on", list(names), format_func=names.__getitem__, key="wf_add_deps"
            )
            if st.form_submit_button("Add task", icon=":material/add:"):
                send(
                    ui.commands().add_task,
                    "Task added.",
                    workflow_id=wid,
                    name=name,
                    kind=kind,
                    assignee=assignee,
                    estimate_minutes=estimate,
                    estimate_confidence=confidence,
                    depends_on=depends_on,
                )


def tasks_tab(wf: dict[str, Any], tasks: list[dict[str, Any]], may_act: bool) -> None:
    wid = str(wf["workflow_id"])
    if not tasks:
        st.info(
            "This workflow has no tasks yet." + (" Add one below." if may_act else ""),
            icon=":material/checklist:",
        )
    else:
        table = task_table(tasks)
        picked = st.dataframe(
            table,
            key=f"wf_tasks_{wid}",
            placeholder=ui.MISSING,
            height=ui.table_height(len(table)),
            on_select="rerun",
            selection_mode="single-row",
            hide_index=True,
            column_order=TASK_COLUMNS,
            column_config=TASK_COLUMN_CONFIG,
        )
        if picked.selection.rows:
            task = tasks[picked.selection.rows[0]]
            with st.container(border=True):
                task_actions(wf, task, tasks, may_act)
        else:
            st.caption("Select a task in the table to start, complete, fail or retry it.")
    if may_act and "add_task" in allowed_actions(wf["status"]):
        add_task_form(wf, tasks)


def newer_pages(name: str, wid: str) -> list[int]:
    """The cursors of the pages newer than the one on screen (a stack: the last one is the
    cursor of the page on screen; empty = the newest page), for one paged list of one workflow."""
    kept = st.session_state.get(name)
    if not kept or kept[0] != wid:  # another workflow: start at its newest page
        kept = st.session_state[name] = (wid, [])
    return kept[1]


def pager(name: str, wid: str, next_before: int | None, total: int, page_size: int) -> None:
    """'Newer' / 'Older' buttons under a paged list. They change the cursor stack in their
    callbacks, which run before the page does, so the run they cause reads the new page."""
    stack = newer_pages(name, wid)

    def show_newer() -> None:
        if stack:
            stack.pop()

    def show_older() -> None:
        if next_before is not None and next_before not in stack:
            stack.append(next_before)

    pages = max(1, -(-total // page_size))
    caption, newer, newest, older = st.columns([4, 1, 1, 1], vertical_alignment="center")
    caption.caption(f"{total:,} in all · page {min(len(stack) + 1, pages):,} of {pages:,}, newest first")
    newer.button(
        "Newer",
        key=f"{name}_newer",
        icon=":material/chevron_left:",
        disabled=not stack,
        on_click=show_newer,
        width="stretch",
    )  # a double click pops once
    newest.button(
        "Newest",
        key=f"{name}_newest",
        icon=":material/first_page:",
        disabled=not stack,
        on_click=stack.clear,
        width="stretch",
    )
    older.button(
        "Older",
        key=f"{name}_older",
        icon=":material/chevron_right:",
        disabled=next_before is None,
        on_click=show_older,
        width="stretch",
    )


def activity_tab(wid: str, detail: Any) -> None:
    activity = detail.activity
    if not activity:
        newer = newer_pages("wf_activity_pages", wid)
        if newer:  # the page we were on is gone (a reset): go back to the newest
            newer.clear()
            st.rerun()
        st.caption("No activity recorded yet.")
        return
    table = pd.DataFrame(
        [
            {"when": a["occurred_at"], "who": a["actor"], "what": a["event_type"], "details": a["summary"]}
            for a in reversed(activity)
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        key="wf_activity",
        placeholder=ui.MISSING,
        height=ui.table_height(len(table), 15),
        column_config={
            "when": ui.datetime_column("When", "YYYY-MM-DD HH:mm:ss"),
            "who": "Who",
            "what": "Event",
            "details": st.column_config.TextColumn("Details", width="large"),
        },
    )
    pager("wf_activity_pages", wid, detail.activity_next_before, detail.activity_total, ACTIVITY_PAGE_SIZE)


def events_tab(wid: str) -> None:
    stream = stream_id_for(wid)
    newer = newer_pages("wf_events_pages", wid)
    # Uncached: the stream of the workflow on screen must include the action just taken.
    log = ui.run_query(
        Q.get_event_log(stream_id=stream, before=newer[-1] if newer else None, limit=EVENT_PAGE), cache=False
    )
    if log is None:
        return
    if not log.events:
        if newer:  # the page we were on is gone (a reset): go back to the newest
            newer.clear()
            st.rerun()
        st.caption("No events in this workflow's stream.")
        return
    table = pd.DataFrame(
        [
            {
                "version": e["version"],
                "position": e["position"],
                "type": e["event_type"],
                "actor": e["actor"],
                "occurred": e["occurred_at"],
                "recorded": e["recorded_at"],
                "correlation_id": str(e["correlation_id"]),
                "payload": json.dumps(e["payload"], ensure_ascii=False, sort_keys=True),
            }
            for e in log.events
        ]
    )
    st.caption(f"Stream {stream}, newest first. Select an event to see it whole.")
    picked = st.dataframe(
        table,
        hide_index=True,
        key="wf_events",
        placeholder=ui.MISSING,
        on_select="rerun",
        selection_mode="single-row",
        column_config={
            "version": st.column_config.NumberColumn("Version", format="%d"),
            "position": st.column_config.NumberColumn("Position", format="%d"),
            "type": "Event",
            "actor": "Actor",
            "occurred": ui.datetime_column("Occurred", "YYYY-MM-DD HH:mm:ss"),
            "recorded": ui.datetime_column("Recorded", "YYYY-MM-DD HH:mm:ss"),
            "correlation_id": "Correlation id",
            "payload": st.column_config.TextColumn("Payload", width="large"),
        },
    )
    pager("wf_events_pages", wid, log.next_before, log.total or 0, EVENT_PAGE)
    if picked.selection.rows:
        event = log.events[picked.selection.rows[0]]
        st.json(
            {
                k: (str(v) if isinstance(v, uuid.UUID) else v.isoformat() if hasattr(v, "isoformat") else v)
                for k, v in event.items()
            }
        )


def show(raw_id: str) -> None:
    """The detail screen of the workflow `raw_id` (as the link gives it: checked here)."""
    if st.button("All workflows", icon=":material/arrow_back:", type="tertiary", key="wf_back"):
        del st.query_params["workflow"]
        st.rerun()
    try:
        wid = str(uuid.UUID(raw_id))
    except ValueError:
        st.error(
            "That link does not point to a workflow; go back to the list and pick one.",
            icon=":material/error:",
        )
        return
    newer = newer_pages("wf_activity_pages", wid)
    with st.spinner("Loading the workflow…"):
        detail = ui.run_query(Q.get_workflow(wid, activity_before=newer[-1] if newer else None), fresh=True)
    if detail is None:
        return
    wf, tasks = detail.workflow, detail.tasks
    user = ui.current_user()
    may_act = user is not None and ui.can("researcher") and may_change(user.name, user.role, wf["owner"])

    st.title(ui.md_escape(wf["title"]), anchor=False)
    tags = " ".join(f":gray-badge[{ui.md_escape(t)}]" for t in (wf.get("tags") or []))
    st.markdown(
        f"{ui.status_badge(wf['status'])} · {ui.label(wf['methodology'])} · {ui.label(wf['priority'])} priority · "
        f"owner {ui.md_escape(wf['owner'])}" + (f" · {tags}" if tags else "")
    )
    with st.container(border=True):
        st.caption("Research question")
        st.markdown(ui.md_escape(wf["research_question"]))

    total, completed = wf["task_total"], wf["task_completed"]
    pct = float(wf.get("progress_pct") or 0.0)
    st.progress(
        min(1.0, pct / 100),
        text=f"{completed} of {total} tasks completed ({pct:.0f}%)" if total else "No tasks yet",
    )
    if wf["finished_at"]:
        took = f"started {ui.when(wf['started_at'])} · {wf['status']} after {ui.duration(wf['duration_seconds'])}"
    elif wf["status"] == "paused":
        paused_at = wf.get("paused_at")
        since = f" since {ui.when(paused_at)} ({ui.ago(paused_at).removesuffix(' ago')})" if paused_at else ""
        took = f"started {ui.when(wf['started_at'])} · paused{since}"
    elif wf["started_at"]:
        took = f"started {ui.when(wf['started_at'])} · running for {ui.ago(wf['started_at']).removesuffix(' ago')}"
    else:
        took = "not started yet"
    due = wf["due_date"].isoformat() if isinstance(wf.get("due_date"), date) else "none"
    st.caption(
        f"Created {ui.when(wf['created_at'])} · {took} · due {due} · "
        f"last activity {ui.ago(wf['last_activity_at'])}"
    )

    workflow_actions(wf, may_act)

    tasks_view, activity_view, events_view = st.tabs(
        [f"Tasks ({total})", "Activity", "Event stream"], key="wf_detail_tabs"
    )
    with tasks_view:
        tasks_tab(wf, tasks, may_act)
    with activity_view:
        activity_tab(wid, detail)
    with events_view:
        events_tab(wid)

    workflow_pictures.show(wf, tasks)
