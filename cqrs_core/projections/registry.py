"""The projections this system runs, by name."""

from __future__ import annotations

from cqrs_core.infra.errors import NotFoundError
from cqrs_core.projections.alert_summary import AlertSummaryProjection
from cqrs_core.projections.base import Projection
from cqrs_core.projections.task_summary import TaskSummaryProjection
from cqrs_core.projections.workflow_activity import WorkflowActivityProjection
from cqrs_core.projections.workflow_summary import WorkflowSummaryProjection

PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        WorkflowSummaryProjection(),
        TaskSummaryProjection(),
        WorkflowActivityProjection(),
        AlertSummaryProjection(),
    )
}
PROJECTION_NAMES: tuple[str, ...] = tuple(PROJECTIONS)


def get_projection(name: str) -> Projection:
    try:
        return PROJECTIONS[name]
    except KeyError:
        known = ", ".join(PROJECTION_NAMES)
        raise NotFoundError(f"There is no projection named {name!r}; use one of: {known}.") from None
