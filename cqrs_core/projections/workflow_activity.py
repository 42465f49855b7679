"""`workflow_activity`: the timeline of each workflow, one row per event with a short sentence
("alice started task 'Search PubMed'") for the detail page."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, text

from cqrs_core.domain.events import EVENT_TYPES
from cqrs_core.event_store import StoredEvent
from cqrs_core.projections.base import Projection, task_uuid, workflow_uuid
from cqrs_core.read_models import WORKFLOW_ACTIVITY, WORKFLOW_ACTIVITY_TABLE, upsert_rows

MAX_DETAIL = 200


def _clip(value: Any) -> str:
    s = " ".join(str(value).split())
    return s if len(s) <= MAX_DETAIL else s[: MAX_DETAIL - 1] + "…"


def _with_reason(sentence: str, reason: Any) -> str:
    return f"{sentence}: {_clip(reason)}" if reason else sentence


def describe(event: StoredEvent, task_name: str | None) -> str:
    """One human sentence for an event (the task name comes from its TaskAdded)."""
    p, who = event.payload, event.actor
    task = f"task '{_clip(task_name)}'" if task_name else "a task"
    attempt = int(p.get("attempt") or 1)
    match event.event_type:
        case "WorkflowCreated":
            return f"{who} created the workflow '{_clip(p.get('title', ''))}'"
        case "WorkflowDetailsUpdated":
            changed = [k.replace("_", " ") for k, v in p.items() if v is not None]
            return f"{who} updated {', '.join(changed) or 'nothing'}"
        case "WorkflowStarted":
            return f"{who} started the workflow"
        case "WorkflowPaused":
            return _with_reason(f"{who} paused the workflow", p.get("reason"))
        case "WorkflowResumed":
            return f"{who} resumed the workflow"
        case "WorkflowCompleted":
            return _with_reason(f"{who} completed the workflow", p.get("reason"))
        case "WorkflowFailed":
            return _with_reason(f"{who} marked the workflow failed", p.get("reason"))
        case "WorkflowCancelled":
            n = len(p.get("cancelled_task_ids") or [])
            suffix = f" ({n} open task{'s' if n != 1 else ''} cancelled)" if n else ""
            return _with_reason(f"{who} cancelled the workflow", p.get("reason")) + suffix
        case "TaskAdded":
            return f"{who} added {task} ({_clip(p.get('kind', ''))}, assigned to {_clip(p.get('assignee', ''))})"
        case "TaskRemoved":
            return f"{who} removed {task}"
        case "TaskStarted":
            return f"{who} started {task}" + (f" (attempt {attempt})" if attempt > 1 else "")
        case "TaskCompleted":
            return f"{who} completed {task}"
        case "TaskFailed":
            return _with_reason(f"{who} reported {task} failed", p.get("error"))
        case "TaskRetried":
            return f"{who} retried {task} (attempt {attempt})"
    return f"{who}: {event.event_type}"


class WorkflowActivityProjection(Projection):
    name = WORKFLOW_ACTIVITY
    tables = (WORKFLOW_ACTIVITY_TABLE,)
    # A missing line in a timeline is tolerable; the rest of the history goes on.
    default_failure_policy = "skip"

    def apply(self, conn: Connection, events: Sequence[StoredEvent], tables: Mapping[str, str]) -> None:
        table = tables[WORKFLOW_ACTIVITY]
        relevant = [e for e in events if e.event_type in EVENT_TYPES]
        if not relevant:
            return
        names = self._known_task_names(conn, table, relevant)
        rows = []
        for event in relevant:
            wid = workflow_uuid(event)
            tid = task_uuid(event.payload["task_id"]) if "task_id" in event.payload else None
            if event.event_type == "TaskAdded":
                names[(wid, tid)] = event.payload.get("name")
            task_name = names.get((wid, tid)) if tid else None
            rows.append(
                {
                    "position": event.position,
                    "workflow_id": wid,
                    "event_type": event.event_type,
                    "actor": event.actor,
                    "occurred_at": event.occurred_at,
                    "task_id": tid,
                    "task_name": task_name,
                    "correlation_id": event.correlation_id,
                    "summary": describe(event, task_name),
                }
            )
        # Plain INSERT (no ON CONFLICT): applying an event twice is a bug and should fail loudly.
        upsert_rows(conn, WORKFLOW_ACTIVITY_TABLE, table, rows, insert_only=True)

    @staticmethod
    def _known_task_names(
        conn: Connection, table: str, events: Sequence[StoredEvent]
    ) -> dict[tuple[uuid.UUID, uuid.UUID | None], str]:
        wanted = {
            (workflow_uuid(e), task_uuid(e.payload["task_id"]))
            for e in events
            if "task_id" in e.payload and e.event_type != "TaskAdded"
        }
        if not wanted:
            return {}
        # Served by the partial index on (workflow_id, task_id) of TaskAdded rows.
        result = conn.execute(
            text(
                f"""
                SELECT workflow_id, task_id, task_name FROM {table}
                WHERE event_type = 'TaskAdded'
                  AND workflow_id = ANY(CAST(:w AS uuid[])) AND task_id = ANY(CAST(:t AS uuid[]))
                ORDER BY position
                """
            ),
            {"w": sorted({str(w) for w, _ in wanted}), "t": sorted({str(t) for _, t in wanted})},
        )
        # Later rows win: a task id re-added after a removal carries its newest name.
        return {(r.workflow_id, r.task_id): r.task_name for r in result if (r.workflow_id, r.task_id) in wanted}
