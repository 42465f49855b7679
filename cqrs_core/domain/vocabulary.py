"""The words of the domain, in one place: roles, methodologies, priorities, task kinds, the
statuses a workflow and its tasks move through, and alert severities and states.

Commands and queries validate against these lists, the aggregate and the projections use the
statuses, pages offer them in their forms and filters, the workload generator draws from them.
A second copy of one of these lists elsewhere is a bug waiting to happen: import it from here."""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["analyst", "researcher", "operator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
ADMIN = "admin"

Methodology = Literal[
    "systematic_review", "meta_analysis", "exploratory", "comparative_analysis", "experimental", "case_study"
]
METHODOLOGIES: tuple[str, ...] = get_args(Methodology)

Priority = Literal["low", "normal", "high", "urgent"]
PRIORITIES: tuple[str, ...] = get_args(Priority)  # lowest first
PRIORITY_RANK: dict[str, int] = {p: rank for rank, p in enumerate(PRIORITIES)}

# In the order the work is usually done (the workload generator builds its task stages from
# this order); "other" fits no stage.
TaskKind = Literal["literature_search", "data_collection", "analysis", "synthesis", "review", "other"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)

WorkflowStatus = Literal["draft", "running", "paused", "completed", "failed", "cancelled"]
WORKFLOW_STATUSES: tuple[str, ...] = get_args(WorkflowStatus)
OPEN_WORKFLOW_STATUSES = frozenset({"draft", "running", "paused"})
TERMINAL_WORKFLOW_STATUSES = frozenset({"completed", "failed", "cancelled"})

TaskStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
# A task that can still move while its workflow runs (a failed task can be retried).
OPEN_TASK_STATUSES = frozenset({"pending", "running", "failed"})
# A task not finished: when its workflow ends (completed, failed or cancelled) such a task is
# cancelled, with a TaskCancelled event per task; a failed task keeps its outcome.
UNFINISHED_TASK_STATUSES = frozenset({"pending", "running"})


def role_holds(role: str, needed: str) -> bool:
    """Whether someone with `role` holds the role `needed`: their own, and an admin holds every
    role; everyone holds analyst (reading needs no role)."""
    return role == needed or role == ADMIN or needed == "analyst"


# How the webhook notification of one alert state change went (alert_deliveries.status): being
# sent or retried, delivered, given up after its tries, or dropped unsent from a full queue.
AlertDeliveryStatus = Literal["sending", "delivered", "failed", "dropped"]
ALERT_DELIVERY_STATUSES: tuple[str, ...] = get_args(AlertDeliveryStatus)
# Alerts (domain/alert.py): how bad, and where each is in its lifecycle. Raised, acknowledged and
# snoozed alerts are open; one open alert per rule and subject.
AlertSeverity = Literal["warning", "critical"]
ALERT_SEVERITIES: tuple[str, ...] = get_args(AlertSeverity)  # least severe first
AlertState = Literal["raised", "acknowledged", "snoozed", "resolved"]
ALERT_STATES: tuple[str, ...] = get_args(AlertState)
OPEN_ALERT_STATES = frozenset({"raised", "acknowledged", "snoozed"})
