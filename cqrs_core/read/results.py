"""What the query handlers return to the pages: plain frozen records of plain data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Marks around the matched words of a search snippet (`WorkflowPage` items of SearchWorkflows):
HIGHLIGHT_START, HIGHLIGHT_STOP = "\ue000", "\ue001"  # private-use marks: no user text can fake them


@dataclass(frozen=True)
class WorkflowPage:
    items: list[dict[str, Any]]
    total: int
    page: int
    page_size: int

    @property
    def page_count(self) -> int:
        return max(1, math.ceil(self.total / self.page_size))


@dataclass(frozen=True)
class WorkflowDetail:
    workflow: dict[str, Any]
    tasks: list[dict[str, Any]]
    activity: list[dict[str, Any]]  # one page of the timeline, in position order
    activity_total: int = 0  # entries in the whole timeline
    activity_next_before: int | None = None  # `activity_before` of the next older page; None: no older one


@dataclass(frozen=True)
class Statistics:
    daily_throughput: list[dict[str, Any]]
    methodology_outcomes: list[dict[str, Any]]
    task_kinds: list[dict[str, Any]]
    assignee_load: list[dict[str, Any]]
    refreshed: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Overview:
    workflows_total: int
    status_counts: dict[str, int]
    completion_rate: float | None
    active_tasks: int
    events_today: int
    events_total: int
    recent_activity: list[dict[str, Any]]


@dataclass(frozen=True)
class EventLogPage:
    events: list[dict[str, Any]]
    next_before: int | None = None
    next_after: int | None = None
    total: int | None = None  # with a stream_id: the matching events in the stream, every page together


@dataclass(frozen=True)
class AuditPage:
    """Audit timeline entries, newest first: id, at, actor, role, action, parameters (a dict),
    outcome, detail. `next_before` pages on (None: this is the last page); `actors` and `actions`
    are every value recorded, for the filters."""

    entries: list[dict[str, Any]]
    next_before: int | None = None
    actors: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AlertDeliveries:
    """Alert notifications, the latest change first: alert_id, step, rule, severity, subject,
    alert_state, summary, occurred_at, url (redacted), status, attempts, last_error,
    last_attempt_at, next_attempt_at, delivered_at, updated_at. `counts`: how many ended in each
    delivery status in the query's window (every status present, zeros included)."""

    deliveries: list[dict[str, Any]]
    counts: dict[str, int]


@dataclass(frozen=True)
class AlertList:
    """Rows of `alert_summary` (alert_id as text, rule, subject, severity, state, summary,
    raised_at, acknowledged_by/at, snoozed_until/by, resolved_at/by, last_reason, last_actor,
    updated_at, version): the open alerts, then the latest resolved ones."""

    open: list[dict[str, Any]]
    recent: list[dict[str, Any]]


@dataclass(frozen=True)
class AlertHistory:
    """One alert's steps, oldest first: version, step (raised, acknowledged, snoozed, snooze ended,
    resolved), actor, occurred_at, why (the step's reason, or what the rule found), until (a
    snooze's end, else None), automatic (a resolve the evaluator made)."""

    alert_id: str
    steps: list[dict[str, Any]]


@dataclass(frozen=True)
class CorrelationTrace:
    correlation_id: str
    commands: list[dict[str, Any]]
    # Each event's "outcomes": {projection: applied | skipped | parked | discarded | not yet}.
    events: list[dict[str, Any]] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)
