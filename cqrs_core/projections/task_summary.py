"""`task_summary`: one row per task with its status, attempts, times, assignee and last error.

`started_at` is the first start and `finished_at` the latest outcome, so `duration_seconds`
covers every attempt; a retry reopens the task (finished_at and duration back to null).

A workflow's end (completed, failed, cancelled) cancels its tasks still pending or running: a
command that ends a workflow appends a TaskCancelled per such task first, and a log written
before that event existed is read the same way (the end event closes them), so a rebuild puts
old data right."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from cqrs_core.domain.events import (
    TASK_EVENTS,
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
    WorkflowFailed,
)
from cqrs_core.domain.vocabulary import UNFINISHED_TASK_STATUSES
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
from cqrs_core.projections.rows import load_rows_by_text_key, load_rows_of_workflows
from cqrs_core.read.tables import TASK_SUMMARY, TASK_SUMMARY_TABLE, delete_rows, upsert_rows

WORKFLOW_ENDS = (WorkflowCompleted, WorkflowFailed, WorkflowCancelled)
HANDLED = event_types(*TASK_EVENTS, *WORKFLOW_ENDS)

Key = tuple[str, str]  # (workflow id, task id) as canonical text


def _keys_of(event: LoggedEvent, ev: DomainEvent) -> list[Key]:
    wid = workflow_key(event)
    if isinstance(ev, TASK_EVENTS):
        return [(wid, task_key(ev.task_id))]
    if isinstance(ev, WorkflowCancelled):
        return [(wid, task_key(t)) for t in ev.cancelled_task_ids or []]
    return []


class TaskSummaryProjection(Projection):
    name = TASK_SUMMARY
    tables = (TASK_SUMMARY_TABLE,)
    default_failure_policy = "skip"
    handled_types = HANDLED

    def apply(self, conn: Connection, events: Sequence[LoggedEvent], tables: Mapping[str, str]) -> None:
        table = tables[TASK_SUMMARY]
        relevant = []
        for e in events:
            if e.event_type in HANDLED:
                ev = domain_event(e)
                relevant.append((_keys_of(e, ev), e, ev))
        if not relevant:
            return
        # The workflows that end in this batch: all their tasks are loaded (the end event
        # closes the unfinished ones, whichever they are).
        ending = {workflow_key(e): None for _, e, ev in relevant if isinstance(ev, WORKFLOW_ENDS)}
        # A task whose first event in this batch is its TaskAdded needs no lookup (the fold
        # starts from that event).
        added_first: dict[Key, bool] = {}
        for keys, _, ev in relevant:
            for k in keys:
                if k not in added_first:
                    added_first[k] = isinstance(ev, TaskAdded)
        wanted = [k for k, added in added_first.items() if not added and k[0] not in ending]
        # None marks a task removed in this batch (its row is deleted).
        rows: dict[Key, dict[str, Any] | None] = {
            (r["workflow_id"], r["task_id"]): r
            for r in load_rows_by_text_key(conn, TASK_SUMMARY_TABLE, table, wanted)
        }
        # The task keys of each ending workflow, in the order they are met.
        tasks_of: dict[str, dict[Key, None]] = {wid: {} for wid in ending}
        for r in load_rows_of_workflows(conn, TASK_SUMMARY_TABLE, table, list(ending)):
            key = (r["workflow_id"], r["task_id"])
            rows[key] = r
            tasks_of[r["workflow_id"]][key] = None
        touched: dict[Key, None] = {}
        fold = self._fold
        for keys, event, ev in relevant:
            if isinstance(ev, WORKFLOW_ENDS):
                wid = workflow_key(event)
                listed = set(keys)  # an old WorkflowCancelled names the open tasks it cancelled
                for key in tasks_of[wid]:
                    row = rows.get(key)
                    if row is not None and (row["status"] in UNFINISHED_TASK_STATUSES or key in listed):
                        _close(row, event)
                        touched[key] = None
                continue
            for key in keys:
                fold(rows, key, event, ev)
                touched[key] = None
                if key[0] in tasks_of:
                    tasks_of[key[0]][key] = None
        upsert_rows(
            conn, TASK_SUMMARY_TABLE, table, [row for k in touched if (row := rows.get(k)) is not None]
        )
        delete_rows(conn, TASK_SUMMARY_TABLE, table, [k for k in touched if rows.get(k) is None])

    @staticmethod
    def _fold(rows: dict[Key, dict[str, Any] | None], key: Key, event: LoggedEvent, ev: DomainEvent) -> None:
        at = event.occurred_at
        if isinstance(ev, TaskAdded):
            rows[key] = {
                "workflow_id": key[0],
                "task_id": key[1],
                "name": ev.name,
                "kind": ev.kind,
                "assignee": ev.assignee,
                "status": "pending",
                "attempts": 0,
                "estimate_minutes": ev.estimate_minutes,
                "estimate_confidence": None if ev.estimate is None else ev.estimate.confidence,
                "depends_on": [str(d) for d in ev.depends_on or []],
                "created_at": at,
                "started_at": None,
                "finished_at": None,
                "duration_seconds": None,
                "last_error": None,
                "result_summary": None,
                "added_version": event.version,
            }
            return
        row = rows.get(key)
        if row is None:
            raise ProjectionError(
                f"{event.event_type} at position {event.position}: unknown task {key[1]} in workflow {key[0]}"
            )
        match ev:
            case TaskStarted(attempt=attempt) | TaskRetried(attempt=attempt):
                row["status"] = "running"
                row["attempts"] = int(attempt)
                row["started_at"] = row["started_at"] or at
                row["finished_at"] = None
                row["duration_seconds"] = None
            case TaskCompleted(result_summary=summary):
                row["status"] = "completed"
                row["result_summary"] = summary
                row["finished_at"] = at
                row["duration_seconds"] = seconds_between(row["started_at"], at)
            case TaskFailed(error=error, attempt=attempt):
                row["status"] = "failed"
                row["last_error"] = error
                row["attempts"] = max(row["attempts"], int(attempt or 0))
                row["finished_at"] = at
                row["duration_seconds"] = seconds_between(row["started_at"], at)
            case TaskRemoved():
                rows[key] = None
            case TaskCancelled():
                _close(row, event)


def _close(row: dict[str, Any], event: LoggedEvent) -> None:
    """Cancel a task (its workflow ended): its time ends at the event."""
    at = event.occurred_at
    row["status"] = "cancelled"
    row["finished_at"] = at
    row["duration_seconds"] = seconds_between(row["started_at"], at)
