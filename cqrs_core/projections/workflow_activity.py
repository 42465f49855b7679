"""`workflow_activity`: the timeline of each workflow, one row per event with a short sentence
("alice started task 'Search PubMed'") for the detail page.

Alert streams are not workflows: their events are passed over here (an alert's history is its
own stream, shown on the Alerts page, and `alert_summary` is its read model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Connection

from cqrs_core.domain.events import (
    EVENT_CLASSES,
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
    WorkflowCreated,
    WorkflowDetailsUpdated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowStarted,
    is_alert_stream,
)
from cqrs_core.eventlog.reader import LoggedEvent
from cqrs_core.projections.base import Projection, domain_event, task_key, workflow_key
from cqrs_core.projections.rows import COPY_NULL, copy_lines, copy_text
from cqrs_core.read.tables import WORKFLOW_ACTIVITY, WORKFLOW_ACTIVITY_TABLE

MAX_DETAIL = 200
_COLUMNS = (
    "position",
    "workflow_id",
    "event_type",
    "actor",
    "occurred_at",
    "task_id",
    "task_name",
    "correlation_id",
    "summary",
)
assert set(_COLUMNS) == set(WORKFLOW_ACTIVITY_TABLE.column_names)
# The fields of a details update in the order its stored payload lists them (jsonb keeps the
# keys of an object shorter first, then by their bytes), which is the order "updated ..." names them.
_DETAIL_FIELDS = sorted((f.name for f in fields(WorkflowDetailsUpdated)), key=lambda name: (len(name), name))


def _clip(value: Any) -> str:
    s = " ".join(str(value).split())
    return s if len(s) <= MAX_DETAIL else s[: MAX_DETAIL - 1] + "…"


def _with_reason(sentence: str, reason: Any) -> str:
    return f"{sentence}: {_clip(reason)}" if reason else sentence


def describe(event: LoggedEvent, ev: DomainEvent, task_name: str | None) -> str:
    """One human sentence for an event (the task name comes from its TaskAdded)."""
    who = event.actor
    task = f"task '{_clip(task_name)}'" if task_name else "a task"
    # Task events first: they are most of a log (a class pattern is one isinstance check).
    match ev:
        case TaskAdded(kind=kind, assignee=assignee):
            return f"{who} added {task} ({_clip(kind)}, assigned to {_clip(assignee)})"
        case TaskStarted(attempt=attempt):
            attempt = int(attempt or 1)
            return f"{who} started {task}" + (f" (attempt {attempt})" if attempt > 1 else "")
        case TaskCompleted():
            return f"{who} completed {task}"
        case TaskFailed(error=error):
            return _with_reason(f"{who} reported {task} failed", error)
        case TaskRetried(attempt=attempt):
            return f"{who} retried {task} (attempt {int(attempt or 1)})"
        case TaskRemoved():
            return f"{who} removed {task}"
        case TaskCancelled(reason=reason):
            return _with_reason(f"{who} cancelled {task}", reason)
        case WorkflowCreated(title=title):
            return f"{who} created the workflow '{_clip(title)}'"
        case WorkflowDetailsUpdated():
            changed = [k.replace("_", " ") for k in _DETAIL_FIELDS if getattr(ev, k) is not None]
            return f"{who} updated {', '.join(changed) or 'nothing'}"
        case WorkflowStarted():
            return f"{who} started the workflow"
        case WorkflowPaused(reason=reason):
            return _with_reason(f"{who} paused the workflow", reason)
        case WorkflowResumed():
            return f"{who} resumed the workflow"
        case WorkflowCompleted(reason=reason):
            return _with_reason(f"{who} completed the workflow", reason)
        case WorkflowFailed(reason=reason):
            return _with_reason(f"{who} marked the workflow failed", reason)
        case WorkflowCancelled(reason=reason, cancelled_task_ids=cancelled):
            n = len(cancelled or [])
            suffix = f" ({n} open task{'s' if n != 1 else ''} cancelled)" if n else ""
            return _with_reason(f"{who} cancelled the workflow", reason) + suffix
    return f"{who}: {event.event_type}"


class WorkflowActivityProjection(Projection):
    name = WORKFLOW_ACTIVITY
    tables = (WORKFLOW_ACTIVITY_TABLE,)
    # A missing line in a timeline is tolerable; the rest of the history goes on.
    default_failure_policy = "skip"
    # Every event, known or not: the timeline has a line for each, so an event this code cannot
    # read (an unknown type, a schema it cannot upcast) is parked here rather than passed over.
    handled_types = None
    lookup_indexes = {  # noqa: RUF012 (read-only class data)
        WORKFLOW_ACTIVITY: ("CREATE INDEX ON {table} (workflow_id, task_id) WHERE event_type = 'TaskAdded'",),
    }

    def apply(self, conn: Connection, events: Sequence[LoggedEvent], tables: Mapping[str, str]) -> None:
        table = tables[WORKFLOW_ACTIVITY]
        relevant = []
        for e in events:
            if is_alert_stream(e.stream_id):
                continue
            ev = domain_event(e)
            tid = task_key(ev.task_id) if isinstance(ev, TASK_EVENTS) else None
            relevant.append((workflow_key(e), tid, e, ev))
        if not relevant:
            return
        names = self._known_task_names(conn, table, relevant)
        lines = []
        for wid, tid, event, ev in relevant:
            kind = (
                event.event_type if event.event_type in EVENT_CLASSES else ev.event_type
            )  # renamed: today's name
            if isinstance(ev, TaskAdded):
                names[(wid, tid)] = ev.name
            task_name = names.get((wid, tid)) if tid else None
            correlation = event.correlation_id
            # One line of COPY text per event, in _COLUMNS order.
            lines.append(
                f"{event.position}\t{wid}\t{copy_text(kind)}\t{copy_text(event.actor)}\t"
                f"{event.occurred_at.isoformat()}\t{tid or COPY_NULL}\t"
                f"{COPY_NULL if task_name is None else copy_text(str(task_name))}\t"
                f"{COPY_NULL if correlation is None else correlation}\t"
                f"{copy_text(describe(event, ev, task_name))}\n"
            )
        # Plain insert (COPY, no ON CONFLICT): applying an event twice is a bug and should fail loudly.
        copy_lines(conn, table, _COLUMNS, lines)

    @staticmethod
    def _known_task_names(
        conn: Connection, table: str, relevant: Sequence[tuple[str, str | None, LoggedEvent, DomainEvent]]
    ) -> dict[tuple[str, str | None], str | None]:
        # Tasks added earlier in this batch are named by the batch itself (in order, below).
        added_here: set[tuple[str, str | None]] = set()
        wanted: set[tuple[str, str]] = set()
        for wid, tid, _, ev in relevant:
            if tid is None:
                continue
            if isinstance(ev, TaskAdded):
                added_here.add((wid, tid))
            elif (wid, tid) not in added_here:
                wanted.add((wid, tid))
        if not wanted:
            return {}
        # Served by the partial index on (workflow_id, task_id) of TaskAdded rows.
        result = conn.exec_driver_sql(
            f"""
            SELECT workflow_id::text, task_id::text, task_name FROM {table}
            WHERE event_type = 'TaskAdded'
              AND workflow_id = ANY(CAST(%(w)s AS uuid[])) AND task_id = ANY(CAST(%(t)s AS uuid[]))
            ORDER BY position
            """,
            {"w": sorted({w for w, _ in wanted}), "t": sorted({t for _, t in wanted})},
        )
        # Later rows win: a task id re-added after a removal carries its newest name.
        return {(w, t): name for w, t, name in result if (w, t) in wanted}

    def applies_to(self, event_type: str, stream_id: str) -> bool:
        return not is_alert_stream(stream_id)
