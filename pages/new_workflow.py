"""New workflow: a research question, its methodology and its tasks, created in one command.

The fields and the task table are checked here first (each problem under its field), then by
the core. The task table reruns on its own (a fragment) after each edit, so "Depends on" offers
the names typed so far. Create waits for the table to settle before it creates: its click only
asks; the next run the browser sends (the table's last edit, or a timer armed by that click)
creates from the table the person saw, so an edit made just before the click is never lost. Submitting the same form twice — a double-click, a retry after a timeout —
re-sends the same command id, so the core creates one workflow, not two. Once the read model
has the new workflow (read-your-writes), its detail opens on the Workflows page.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.domain.vocabulary import METHODOLOGIES, PRIORITIES, TASK_KINDS
from cqrs_core.infra.errors import ValidationError
from cqrs_core.read.queries import QueryFactory
from cqrs_core.write.commands import MAX_TAGS

ui.require_entry_point()

TITLE_LIMIT = 200  # characters, as the core's CreateResearchWorkflow allows
PENDING_KEY = "new_wf_pending"  # the command id (and ids inside it) of the last submitted form contents
CREATE_KEY = "new_wf_create"  # a Create click on its way: "asked" (its own run), then "waiting"
CREATE_WITHIN = 30.0  # seconds: a click still waiting after this (the person left the page) is dropped
# The browser hands a table edit over 150 ms after it (Streamlit debounces a "rerun" editor), so
# a Create clicked within that time arrives first. Its run arms a fragment timer this long: the
# run the browser sends next carries every edit made before the click.
SETTLE_SECONDS = 0.5
TASK_ROWS = 10  # rows to type into; a fixed count keeps the editor (and its edits) the same widget
TASK_COLUMNS = {
    "name": "Task",
    "kind": "Kind",
    "assignee": "Assignee",
    "estimate": "Estimate",
    "depends_on": "Depends on",
}


@dataclass
class Problems:
    """What is wrong with the form, by field; `general` for what belongs to no single field."""

    by_field: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def add(self, name: str, message: str) -> None:
        self.by_field.setdefault(name, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.by_field or self.general)


def cell_text(value: Any) -> str:
    """A data-editor cell as text: empty cells (None, NaN, <NA>) become ''."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def cell_list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if cell_text(v).strip()]
    text = cell_text(value).strip()
    return [text] if text else []


def task_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows somebody filled in, as plain values with their row number in the table. A row
    with only the defaults (kind, assignee) and no name, estimate or dependency is ignored."""
    rows = []
    for number, record in enumerate(table.to_dict("records"), start=1):
        estimate = record.get("estimate")
        row = {
            "row": number,
            "name": cell_text(record.get("name")).strip(),
            "kind": cell_text(record.get("kind")) or "other",
            "assignee": cell_text(record.get("assignee")).strip(),
            "estimate": None if cell_text(estimate) == "" else int(estimate),
            "depends_on": cell_list(record.get("depends_on")),
        }
        if row["name"] or row["estimate"] is not None or row["depends_on"]:
            rows.append(row)
    return rows


def check_tasks(rows: list[dict[str, Any]], problems: Problems) -> None:
    """Rules the table itself can break: names, assignees, and dependencies on tasks above."""
    seen: dict[str, int] = {}
    wanted = {dep for row in rows for dep in row["depends_on"]}
    for row in rows:
        name, number = row["name"], row["row"]
        where = f"Row {number}" + (f" ({name})" if name else "")
        if not name:
            problems.add("tasks", f"{where}: give the task a name.")
        if not row["assignee"]:
            problems.add("tasks", f"{where}: say who does it (assignee).")
        for dep in row["depends_on"]:
            if dep == name:
                problems.add("tasks", f"{where}: a task cannot depend on itself.")
            elif dep not in seen:
                problems.add("tasks", f"{where}: depends on “{dep}”, which is not a task listed above it.")
        if name in seen and name in wanted:
            problems.add(
                "tasks",
                f"{where}: another task is also named “{name}”; rename one so the "
                "dependencies are unambiguous.",
            )
        seen.setdefault(name, number)


def field_of(problem: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Which form field a core validation problem ('research question: must not be blank',
    'tasks.0.name: ...') belongs to, and the message to show under it (task problems name the
    row of the table)."""
    where, _, message = problem.partition(": ")
    head = where.split(".")[0]
    if head == "tasks" and where.count(".") >= 2:
        _, index, column = where.split(".", 2)
        if index.isdigit() and int(index) < len(rows):
            return "tasks", f"Row {rows[int(index)]['row']}, {column}: {message}"
    if head in ("title", "research question", "methodology", "priority", "tags", "due date", "tasks"):
        return head, message or problem
    return "", problem


def show_problems(slot, messages: list[str]) -> None:
    if messages:
        slot.caption("\n\n".join(f":red[:material/error: {ui.md_escape(m)}]" for m in messages))


st.title("New workflow")
st.caption(
    "A research question, how you will answer it, and the tasks that get you there. "
    "It starts as a draft: start it from its page when you are ready."
)

user = ui.current_user()
if not ui.can("researcher"):
    st.info(
        f"You are signed in as {ui.md_escape(user.name)} with the {user.role} role; creating workflows "
        "needs the researcher role. Ask an admin, or browse existing work on the Workflows page.",
        icon=":material/lock:",
    )
    st.page_link("pages/workflows.py", label="Browse workflows", icon=":material/lab_profile:")
    st.stop()


def ask_to_create() -> None:
    st.session_state[CREATE_KEY] = "asked"


def typed_table(base: pd.DataFrame) -> pd.DataFrame:
    """The task table as the browser last handed it over (the editor's edits applied to `base`),
    read before the editor is drawn so its "Depends on" options can name the tasks typed."""
    table = base.copy()
    edits = st.session_state.get("new_wf_tasks") or {}
    for row, cells in (edits.get("edited_rows") or {}).items():
        for column, value in cells.items():
            if column in table.columns and 0 <= int(row) < len(table):
                table.at[int(row), column] = value
    return table


# Where a Create click stands. Its own run only asks ("asked" → "waiting"); the next full run
# creates. A fragment run in between (the table's last edit landing, or the timer armed below)
# sees "waiting" and asks for that full run.
create_state = st.session_state.get(CREATE_KEY)
create_now = (
    create_state == "waiting"
    and time.monotonic() - st.session_state.get(CREATE_KEY + "_at", 0.0) < CREATE_WITHIN
)
if create_state == "waiting":
    del st.session_state[CREATE_KEY]

left, right = st.columns([2, 1])
with left:
    title = st.text_input(
        "Title",
        # No max_chars: the browser drops a paste longer than max_chars, leaving the field empty
        # without a word. The limit is checked here instead, and said, with the text kept.
        # Fields hand their value over without a rerun ("ignore"); Create's run reads them all.
        on_change="ignore",
        key="new_wf_title",
        placeholder="e.g. Remote work and productivity in small firms",
    )
    title_slot = st.empty()
with right:
    methodology = st.selectbox(
        "Methodology",
        METHODOLOGIES,
        format_func=ui.label,
        key="new_wf_methodology",
        on_change="ignore",
    )
    methodology_slot = st.empty()
question = st.text_area(
    "Research question",
    max_chars=2000,
    key="new_wf_question",
    height=90,
    placeholder="What do you want to find out?",
    on_change="ignore",
)
question_slot = st.empty()
# Priority on a line of its own: in a column beside the tags, High and Urgent were clipped.
with ui.wrapping_row():
    priority = st.segmented_control(
        "Priority",
        PRIORITIES,
        default="normal",
        format_func=ui.label,
        required=True,
        key="new_wf_priority",
        on_change="ignore",
    )
priority_slot = st.empty()
tags_col, due_col = st.columns([3, 1])
with tags_col:
    tags = st.multiselect(
        "Tags",
        [],
        accept_new_options=True,
        max_selections=MAX_TAGS,
        key="new_wf_tags",
        placeholder="Type a tag and press Enter",
        help=f"Up to {MAX_TAGS} tags of 40 characters.",
        on_change="ignore",
    )
    tags_slot = st.empty()
with due_col:
    due_date = st.date_input(
        "Due date",
        value=None,
        min_value=date.today(),
        key="new_wf_due",
        help="Optional.",
        on_change="ignore",
    )
    due_slot = st.empty()

st.markdown("**Tasks**")
st.caption(
    "One row per task, in the order they can be done; empty rows are ignored. *Depends on* offers "
    "the tasks typed so far: pick those listed above the row. You can also add tasks later."
)
empty_tasks = pd.DataFrame(
    {
        "name": pd.Series([None] * TASK_ROWS, dtype="string"),
        "kind": pd.Series(["analysis"] * TASK_ROWS, dtype="string"),
        "assignee": pd.Series([user.name] * TASK_ROWS, dtype="string"),
        "estimate": pd.Series([None] * TASK_ROWS, dtype="Int64"),
        "depends_on": pd.Series([[] for _ in range(TASK_ROWS)], dtype="object"),
    }
)


def task_table() -> pd.DataFrame:
    """The task table. Each edit reruns only this (Streamlit sends it 150 ms after the edit);
    "Depends on" then offers the names typed. With a fixed number of rows and a key, the editor
    stays the same widget while its options change, so no edit is dropped."""
    if st.session_state.get(CREATE_KEY) == "waiting":
        st.rerun(scope="app")  # the table has settled since the Create click: create now
    names = [r["name"] for r in task_rows(typed_table(empty_tasks)) if r["name"]]
    return st.data_editor(
        empty_tasks,
        key="new_wf_tasks",
        num_rows="fixed",
        hide_index=True,
        placeholder="",
        width="stretch",
        column_config={
            # Fixed widths, 500 px in all: every column on screen at 1024 px, inside the form's padding.
            "name": st.column_config.TextColumn(TASK_COLUMNS["name"], max_chars=200, width=160),
            "kind": st.column_config.SelectboxColumn(
                TASK_COLUMNS["kind"], options=list(TASK_KINDS), default="analysis", width=95
            ),
            "assignee": st.column_config.TextColumn(
                TASK_COLUMNS["assignee"], default=user.name, max_chars=100, width=85
            ),
            "estimate": st.column_config.NumberColumn(
                TASK_COLUMNS["estimate"],
                min_value=1,
                max_value=100_000,
                step=1,
                format="%d min",
                help="Minutes of work (optional).",
                width=75,
            ),
            "depends_on": st.column_config.MultiselectColumn(
                TASK_COLUMNS["depends_on"],
                options=list(dict.fromkeys(names)),
                accept_new_options=True,
                help="Tasks that must be completed first (names of tasks above this one).",
                width=85,
            ),
        },
    )


settling = create_state == "asked"
table = st.fragment(task_table, run_every=SETTLE_SECONDS if settling else None)()
tasks_slot = st.empty()
st.button(
    "Create workflow",
    type="primary",
    icon=":material/add_circle:",
    key="new_wf_create_button",
    on_click=ask_to_create,
)
if settling:
    st.session_state[CREATE_KEY] = "waiting"
    st.session_state[CREATE_KEY + "_at"] = time.monotonic()
    st.caption(":material/hourglass_top: Creating the workflow…")

if create_now:
    rows = task_rows(table)
    problems = Problems()
    if len(title) > TITLE_LIMIT:
        problems.add(
            "title",
            f"A title can have at most {TITLE_LIMIT} characters; this one has {len(title):,}. Shorten it.",
        )
    check_tasks(rows, problems)

    fingerprint = json.dumps(
        {
            "title": title,
            "question": question,
            "methodology": methodology,
            "priority": priority,
            "tags": tags,
            "due": due_date.isoformat() if due_date else None,
            "tasks": rows,
        },
        sort_keys=True,
    )
    pending = st.session_state.get(PENDING_KEY)
    if not pending or pending["fingerprint"] != fingerprint:
        pending = {
            "fingerprint": fingerprint,
            "command_id": str(uuid.uuid4()),
            "workflow_id": str(uuid.uuid4()),
            "task_ids": [str(uuid.uuid4()) for _ in rows],
        }

    command = None
    if not problems:
        ids = {row["name"]: task_id for row, task_id in zip(rows, pending["task_ids"], strict=True)}
        tasks = [
            {
                "task_id": task_id,
                "name": row["name"],
                "kind": row["kind"],
                "assignee": row["assignee"],
                "estimate_minutes": row["estimate"],
                "depends_on": [ids[d] for d in row["depends_on"]],
            }
            for row, task_id in zip(rows, pending["task_ids"], strict=True)
        ]
        try:
            command = ui.commands().create_research_workflow(
                title=title or "",
                research_question=question or "",
                methodology=methodology,
                priority=priority or "normal",
                tags=tags,
                due_date=due_date,
                tasks=tasks,
                workflow_id=pending["workflow_id"],
                command_id=pending["command_id"],
            )
        except ValidationError as exc:
            for problem in exc.problems or [exc.user_message]:
                name, message = field_of(problem, rows)
                if name:
                    problems.add(name, message)
                else:
                    problems.general.append(message)

    if problems:
        slots = {
            "title": title_slot,
            "research question": question_slot,
            "methodology": methodology_slot,
            "priority": priority_slot,
            "tags": tags_slot,
            "due date": due_slot,
            "tasks": tasks_slot,
        }
        for name, messages in problems.by_field.items():
            show_problems(slots[name], messages)
        reason = "; ".join(problems.general) if problems.general else "fix the fields marked above."
        st.error(ui.md_escape(f"The workflow was not created: {reason}"), icon=":material/error:")
    else:
        st.session_state[PENDING_KEY] = pending  # before sending: a second click re-sends this same id
        result = ui.run_command(command)
        if result is not None:
            with st.spinner("Waiting for the read model to include your new workflow…"):
                created = ui.run_query(
                    QueryFactory().get_workflow(result.aggregate_id), min_position=result.position
                )
            if created is not None:
                st.toast(
                    "This workflow was already created; opening it."
                    if result.duplicate
                    else "Workflow created as a draft.",
                    icon=":material/check_circle:",
                )
                st.switch_page("pages/workflow.py", query_params={"workflow": result.aggregate_id})
            st.page_link(
                "pages/workflow.py",
                label="Open it on the Workflows page",
                query_params={"workflow": result.aggregate_id},
                icon=":material/open_in_new:",
            )
