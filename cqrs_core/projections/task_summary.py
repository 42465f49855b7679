"""`task_summary`: one row per task with its status, attempts, times, assignee and last error.

`started_at` is the first start and `finished_at` the latest outcome, so `duration_seconds`
covers every attempt; a retry reopens the task (finished_at and duration back to null)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from cqrs_core.eventlog.reader import LoggedEvent
from cqrs_core.projections.base import Projection, ProjectionError, seconds_between, task_key, workflow_key
from cqrs_core.projections.rows import load_rows_by_text_key
from cqrs_core.read.tables import TASK_SUMMARY, TASK_SUMMARY_TABLE, delete_rows, upsert_rows

HANDLED = frozenset(
    {
        "TaskAdded",
        "TaskRemoved",
        "TaskStarted",
        "TaskCompleted",
        "TaskFailed",
        "TaskRetried",
        "WorkflowCancelled",
    }
)

Key = tuple[str, str]  # (workflow id, task id) as canonical text


def _keys_of(event: LoggedEvent) -> list[Key]:
    wid = workflow_key(event)
    if event.event_type == "WorkflowCancelled":
        return [(wid, task_key(t)) for t in event.payload.get("cancelled_task_ids") or []]
    return [(wid, task_key(event.payload["task_id"]))]


class TaskSummaryProjection(Projection):
    name = TASK_SUMMARY
    tables = (TASK_SUMMARY_TABLE,)
    default_failure_policy = "skip"
    handled_types = HANDLED

    def apply(self, conn: Connection, events: Sequence[LoggedEvent], tables: Mapping[str, str]) -> None:
        table = tables[TASK_SUMMARY]
        relevant = [(_keys_of(e), e) for e in events if e.event_type in HANDLED]
        if not relevant:
            return
        # A task whose first event in this batch is its TaskAdded needs no lookup (the fold
        # starts from that event).
        first: dict[Key, str] = {}
        for keys, e in relevant:
            for k in keys:
                if k not in first:
                    first[k] = e.event_type
        wanted = [k for k, kind in first.items() if kind != "TaskAdded"]
        # None marks a task removed in this batch (its row is deleted).
        rows: dict[Key, dict[str, Any] | None] = {
            (r["workflow_id"], r["task_id"]): r
            for r in load_rows_by_text_key(conn, TASK_SUMMARY_TABLE, table, wanted)
        }
        touched: dict[Key, None] = {}
        fold = self._fold
        for keys, event in relevant:
            for key in keys:
                fold(rows, key, event)
                touched[key] = None
        upsert_rows(
            conn, TASK_SUMMARY_TABLE, table, [row for k in touched if (row := rows.get(k)) is not None]
        )
        delete_rows(conn, TASK_SUMMARY_TABLE, table, [k for k in touched if rows.get(k) is None])

    @staticmethod
    def _fold(rows: dict[Key, dict[str, Any] | None], key: Key, event: LoggedEvent) -> None:
        p, kind, at = event.payload, event.event_type, event.occurred_at
        if kind == "TaskAdded":
            rows[key] = {
                "workflow_id": key[0],
                "task_id": key[1],
                "name": p["name"],
                "kind": p["kind"],
                "assignee": p["assignee"],
                "status": "pending",
                "attempts": 0,
                "estimate_minutes": p.get("estimate_minutes"),
                "depends_on": [str(d) for d in p.get("depends_on") or []],
                "created_at": at,
                "started_at": None,
                "finished_at": None,
                "duration_seconds": None,
                "last_error": None,
                "result_summary": None,
            }
            return
        row = rows.get(key)
        if row is None:
            if kind == "WorkflowCancelled":
                return  # cancelling a task that is already gone changes nothing
            raise ProjectionError(
                f"{kind} at position {event.position}: unknown task {key[1]} in workflow {key[0]}"
            )
        if kind == "TaskRemoved":
            rows[key] = None
        elif kind in ("TaskStarted", "TaskRetried"):
            row["status"] = "running"
            row["attempts"] = int(p["attempt"])
            row["started_at"] = row["started_at"] or at
            row["finished_at"] = None
            row["duration_seconds"] = None
        elif kind == "TaskCompleted":
            row["status"] = "completed"
            row["result_summary"] = p.get("result_summary")
            row["finished_at"] = at
            row["duration_seconds"] = seconds_between(row["started_at"], at)
        elif kind == "TaskFailed":
            row["status"] = "failed"
            row["last_error"] = p.get("error")
            row["attempts"] = max(row["attempts"], int(p.get("attempt") or 0))
            row["finished_at"] = at
            row["duration_seconds"] = seconds_between(row["started_at"], at)
        elif kind == "WorkflowCancelled" and row["status"] in ("pending", "running"):
            row["status"] = "cancelled"
            row["finished_at"] = at
            row["duration_seconds"] = seconds_between(row["started_at"], at)
