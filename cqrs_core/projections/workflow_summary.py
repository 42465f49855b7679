"""`workflow_summary`: one row per workflow for the list, search and detail pages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection

from cqrs_core.domain.vocabulary import PRIORITY_RANK, TASK_STATUSES
from cqrs_core.eventlog.reader import LoggedEvent
from cqrs_core.projections.base import Projection, ProjectionError, seconds_between, task_key, workflow_key
from cqrs_core.projections.rows import load_rows_by_text_key
from cqrs_core.read.tables import WORKFLOW_SUMMARY, WORKFLOW_SUMMARY_TABLE, upsert_rows

_TERMINAL = {"WorkflowCompleted": "completed", "WorkflowFailed": "failed", "WorkflowCancelled": "cancelled"}
_TASK_STATUS = {
    "TaskAdded": "pending",
    "TaskStarted": "running",
    "TaskRetried": "running",
    "TaskCompleted": "completed",
    "TaskFailed": "failed",
}
_COUNTED = {s: f"task_{s}" for s in TASK_STATUSES}
_DETAIL_FIELDS = ("title", "research_question", "methodology", "tags", "priority", "due_date")
HANDLED = frozenset(
    {
        "WorkflowCreated",
        "WorkflowDetailsUpdated",
        "WorkflowStarted",
        "WorkflowPaused",
        "WorkflowResumed",
        "TaskRemoved",
        *_TERMINAL,
        *_TASK_STATUS,
    }
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
        relevant = [(workflow_key(e), e) for e in events if e.event_type in HANDLED]
        if not relevant:
            return
        # A workflow whose first event in this batch is its WorkflowCreated needs no lookup: the
        # fold starts from that event, not from a stored row.
        first: dict[str, str] = {}
        for wid, e in relevant:
            if wid not in first:
                first[wid] = e.event_type
        wanted = [(wid,) for wid, kind in first.items() if kind != "WorkflowCreated"]
        rows: dict[str, dict[str, Any]] = {
            r["workflow_id"]: r for r in load_rows_by_text_key(conn, WORKFLOW_SUMMARY_TABLE, table, wanted)
        }
        changed: dict[str, None] = {}
        fold = self._fold
        row: dict[str, Any] | None
        for wid, event in relevant:
            if event.event_type == "WorkflowCreated":
                rows[wid] = row = self._created(wid, event)
            else:
                row = rows.get(wid)
                if row is None:
                    raise ProjectionError(
                        f"{event.event_type} at position {event.position}: workflow {wid} was never created"
                    )
                fold(row, event)
            if event.occurred_at > row["last_activity_at"]:
                row["last_activity_at"] = event.occurred_at
            row["version"] = event.version
            changed[wid] = None
        for wid in changed:
            self._count_tasks(rows[wid])
        upsert_rows(conn, WORKFLOW_SUMMARY_TABLE, table, [rows[w] for w in changed])

    @staticmethod
    def _created(wid: str, event: LoggedEvent) -> dict[str, Any]:
        p = event.payload
        return {
            "workflow_id": wid,
            "title": p["title"],
            "research_question": p["research_question"],
            "methodology": p["methodology"],
            "status": "draft",
            "priority": p["priority"],
            "priority_rank": _rank(p["priority"]),
            "owner": p["owner"],
            "tags": list(p.get("tags") or []),
            "due_date": _due(p.get("due_date")),
            "created_at": event.occurred_at,
            "started_at": None,
            "finished_at": None,
            "duration_seconds": None,
            "last_activity_at": event.occurred_at,
            "version": event.version,
            "task_statuses": {},
        }

    @staticmethod
    def _fold(row: dict[str, Any], event: LoggedEvent) -> None:
        p, kind = event.payload, event.event_type
        tasks: dict[str, str] = row["task_statuses"]
        if kind == "WorkflowDetailsUpdated":
            for field in _DETAIL_FIELDS:
                if p.get(field) is not None:
                    row[field] = _due(p[field]) if field == "due_date" else p[field]
            if p.get("priority") is not None:
                row["priority_rank"] = _rank(p["priority"])
        elif kind == "WorkflowStarted":
            row["status"] = "running"
            row["started_at"] = row["started_at"] or event.occurred_at
        elif kind == "WorkflowPaused":
            row["status"] = "paused"
        elif kind == "WorkflowResumed":
            row["status"] = "running"
        elif kind in _TERMINAL:
            row["status"] = _TERMINAL[kind]
            row["finished_at"] = event.occurred_at
            row["duration_seconds"] = seconds_between(row["started_at"], event.occurred_at)
            for raw_id in p.get("cancelled_task_ids") or []:
                task_id = task_key(raw_id)
                if task_id in tasks:
                    tasks[task_id] = "cancelled"
        elif kind == "TaskAdded":
            tasks[task_key(p["task_id"])] = "pending"
        elif kind == "TaskRemoved":
            if tasks.pop(task_key(p["task_id"]), None) is None:
                raise ProjectionError(
                    f"TaskRemoved at position {event.position}: unknown task {p['task_id']}"
                )
        else:
            task_id = task_key(p["task_id"])
            if task_id not in tasks:
                raise ProjectionError(f"{kind} at position {event.position}: unknown task {task_id}")
            tasks[task_id] = _TASK_STATUS[kind]

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
