"""`workflow_summary`: one row per workflow for the list, search and detail pages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection

from cqrs_core.domain.events import (
    DomainEvent,
    TaskAdded,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskRemoved,
    TaskRetried,
    TaskStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowDetailsUpdated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowStarted,
)
from cqrs_core.domain.vocabulary import PRIORITY_RANK, TASK_STATUSES, UNFINISHED_TASK_STATUSES
from cqrs_core.eventlog.reader import LoggedEvent
from cqrs_core.projections.base import (
    Projection,
    ProjectionError,
    domain_event,
    event_types,
    seconds_between,
    task_key,
    workflow_key,
)
from cqrs_core.projections.rows import load_rows_by_text_key
from cqrs_core.read.tables import WORKFLOW_SUMMARY, WORKFLOW_SUMMARY_TABLE, upsert_rows

_COUNTED = {s: f"task_{s}" for s in TASK_STATUSES}
HANDLED = event_types(
    WorkflowCreated,
    WorkflowDetailsUpdated,
    WorkflowStarted,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    TaskAdded,
    TaskRemoved,
    TaskStarted,
    TaskRetried,
    TaskCompleted,
    TaskFailed,
    TaskCancelled,
)


def _due(value: Any) -> date | None:
    return date.fromisoformat(value) if value else None


def _rank(priority: str) -> int:
    # Unknown priorities sort with "normal" rather than stopping the projection.
    return PRIORITY_RANK.get(priority, PRIORITY_RANK["normal"])


class WorkflowSummaryProjection(Projection):
    name = WORKFLOW_SUMMARY
    tables = (WORKFLOW_SUMMARY_TABLE,)
    # The counts of every later event build on each one; a hole would be wrong for good.
    default_failure_policy = "fault"
    handled_types = HANDLED

    def apply(self, conn: Connection, events: Sequence[LoggedEvent], tables: Mapping[str, str]) -> None:
        table = tables[WORKFLOW_SUMMARY]
        relevant = [(workflow_key(e), e, domain_event(e)) for e in events if e.event_type in HANDLED]
        if not relevant:
            return
        # A workflow whose first event in this batch is its WorkflowCreated needs no lookup: the
        # fold starts from that event, not from a stored row.
        created_first: dict[str, bool] = {}
        for wid, _, ev in relevant:
            if wid not in created_first:
                created_first[wid] = isinstance(ev, WorkflowCreated)
        wanted = [(wid,) for wid, created in created_first.items() if not created]
        rows: dict[str, dict[str, Any]] = {
            r["workflow_id"]: r for r in load_rows_by_text_key(conn, WORKFLOW_SUMMARY_TABLE, table, wanted)
        }
        changed: dict[str, None] = {}
        fold = self._fold
        row: dict[str, Any] | None
        for wid, event, ev in relevant:
            if isinstance(ev, WorkflowCreated):
                rows[wid] = row = self._created(wid, event, ev)
            else:
                row = rows.get(wid)
                if row is None:
                    raise ProjectionError(
                        f"{event.event_type} at position {event.position}: workflow {wid} was never created"
                    )
                fold(row, event, ev)
            if event.occurred_at > row["last_activity_at"]:
                row["last_activity_at"] = event.occurred_at
            row["version"] = event.version
            changed[wid] = None
        for wid in changed:
            self._count_tasks(rows[wid])
        upsert_rows(conn, WORKFLOW_SUMMARY_TABLE, table, [rows[w] for w in changed])

    @staticmethod
    def _created(wid: str, event: LoggedEvent, ev: WorkflowCreated) -> dict[str, Any]:
        return {
            "workflow_id": wid,
            "title": ev.title,
            "research_question": ev.research_question,
            "methodology": ev.methodology,
            "status": "draft",
            "priority": ev.priority,
            "priority_rank": _rank(ev.priority),
            "owner": ev.owner,
            "tags": list(ev.tags or []),
            "due_date": _due(ev.due_date),
            "created_at": event.occurred_at,
            "started_at": None,
            "finished_at": None,
            "duration_seconds": None,
            "last_activity_at": event.occurred_at,
            "version": event.version,
            "task_statuses": {},
            "paused_at": None,
        }

    @staticmethod
    def _fold(row: dict[str, Any], event: LoggedEvent, ev: DomainEvent) -> None:
        tasks: dict[str, str] = row["task_statuses"]
        # Task events first: they are most of a log (a class pattern is one isinstance check).
        match ev:
            case TaskAdded(task_id=task_id):
                tasks[task_key(task_id)] = "pending"
            case TaskStarted(task_id=task_id) | TaskRetried(task_id=task_id):
                _move_task(tasks, event, task_id, "running")
            case TaskCompleted(task_id=task_id):
                _move_task(tasks, event, task_id, "completed")
            case TaskFailed(task_id=task_id):
                _move_task(tasks, event, task_id, "failed")
            case TaskCancelled(task_id=task_id):
                _move_task(tasks, event, task_id, "cancelled")
            case TaskRemoved(task_id=task_id):
                if tasks.pop(task_key(task_id), None) is None:
                    raise ProjectionError(f"TaskRemoved at position {event.position}: unknown task {task_id}")
            case WorkflowStarted():
                row["status"] = "running"
                row["started_at"] = row["started_at"] or event.occurred_at
            case WorkflowPaused():
                row["status"] = "paused"
                row["paused_at"] = event.occurred_at
            case WorkflowResumed():
                row["status"] = "running"
                row["paused_at"] = None
            case WorkflowCompleted():
                _finish(row, event, "completed")
            case WorkflowFailed():
                _finish(row, event, "failed")
            case WorkflowCancelled(cancelled_task_ids=cancelled):
                _finish(row, event, "cancelled")
                for raw_id in cancelled or []:
                    task_id = task_key(raw_id)
                    if task_id in tasks:
                        tasks[task_id] = "cancelled"
            case WorkflowDetailsUpdated():
                if ev.title is not None:
                    row["title"] = ev.title
                if ev.research_question is not None:
                    row["research_question"] = ev.research_question
                if ev.methodology is not None:
                    row["methodology"] = ev.methodology
                if ev.tags is not None:
                    row["tags"] = list(ev.tags)
                if ev.priority is not None:
                    row["priority"] = ev.priority
                    row["priority_rank"] = _rank(ev.priority)
                if ev.due_date is not None:
                    row["due_date"] = _due(ev.due_date)

    @staticmethod
    def _count_tasks(row: dict[str, Any]) -> None:
        counts = dict.fromkeys(_COUNTED, 0)
        for status in row["task_statuses"].values():
            if status in counts:
                counts[status] += 1
        for status, column in _COUNTED.items():
            row[column] = counts[status]
        total = len(row["task_statuses"])
        row["task_total"] = total
        row["progress_pct"] = (counts["completed"] / total * 100.0) if total else 0.0


def _move_task(tasks: dict[str, str], event: LoggedEvent, raw_id: str, status: str) -> None:
    task_id = task_key(raw_id)
    if task_id not in tasks:
        raise ProjectionError(f"{event.event_type} at position {event.position}: unknown task {task_id}")
    tasks[task_id] = status


def _finish(row: dict[str, Any], event: LoggedEvent, status: str) -> None:
    row["status"] = status
    row["paused_at"] = None
    # A log written before TaskCancelled existed may end a workflow with tasks still pending or
    # running: they are cancelled all the same, as the aggregate and task_summary read it.
    tasks: dict[str, str] = row["task_statuses"]
    for task_id, task_status in tasks.items():
        if task_status in UNFINISHED_TASK_STATUSES:
            tasks[task_id] = "cancelled"
    row["finished_at"] = event.occurred_at
    row["duration_seconds"] = seconds_between(row["started_at"], event.occurred_at)
