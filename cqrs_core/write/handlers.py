"""Command handlers, routed by table (as cosmicpython does): each command class maps to a plain
function. A workflow command's handler turns it into calls on the aggregate and returns the
events it decided (an alert command's the same, on the Alert aggregate); an operator command's
handler acts on the projection manager and returns what it acted on. The command bus
(command_bus.py) runs the pipeline around them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cqrs_core.domain.alert import Alert
from cqrs_core.domain.events import DomainEvent
from cqrs_core.domain.workflow import ResearchWorkflow
from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import ValidationError
from cqrs_core.write import commands as c

# ------------------------------------------------------------ workflow commands


@dataclass(frozen=True)
class _TaskSpec:
    task_id: str
    name: str
    kind: str
    assignee: str
    estimate_minutes: int | None
    depends_on: list[str] = field(default_factory=list)
    estimate_confidence: str | None = None


def _due(cmd: c.CreateResearchWorkflow | c.UpdateWorkflowDetails) -> str | None:
    return cmd.due_date.isoformat() if cmd.due_date else None


def _create(wf: ResearchWorkflow, cmd: c.CreateResearchWorkflow, _: Settings) -> list[DomainEvent]:
    tasks = [
        _TaskSpec(
            str(t.task_id),
            t.name,
            t.kind,
            t.assignee,
            t.estimate_minutes,
            [str(d) for d in t.depends_on],
            t.estimate_confidence,
        )
        for t in cmd.tasks
    ]
    return wf.create(
        title=cmd.title,
        research_question=cmd.research_question,
        methodology=cmd.methodology,
        tags=cmd.tags,
        priority=cmd.priority,
        owner=cmd.actor,
        due_date=_due(cmd),
        tasks=tasks,
    )


def _update_details(wf: ResearchWorkflow, cmd: c.UpdateWorkflowDetails, _: Settings) -> list[DomainEvent]:
    return wf.update_details(
        title=cmd.title,
        research_question=cmd.research_question,
        methodology=cmd.methodology,
        tags=cmd.tags,
        priority=cmd.priority,
        due_date=_due(cmd),
    )


def _add_task(wf: ResearchWorkflow, cmd: c.AddTask, _: Settings) -> list[DomainEvent]:
    return wf.add_task(
        task_id=str(cmd.task_id),
        name=cmd.name,
        kind=cmd.kind,
        assignee=cmd.assignee,
        estimate_minutes=cmd.estimate_minutes,
        estimate_confidence=cmd.estimate_confidence,
        depends_on=[str(d) for d in cmd.depends_on],
    )


WorkflowHandler = Callable[[ResearchWorkflow, Any, Settings], list[DomainEvent]]

WORKFLOW_HANDLERS: dict[type[c.WorkflowCommand], WorkflowHandler] = {
    c.CreateResearchWorkflow: _create,
    c.UpdateWorkflowDetails: _update_details,
    c.StartWorkflow: lambda wf, cmd, _: wf.start(),
    c.PauseWorkflow: lambda wf, cmd, _: wf.pause(cmd.reason),
    c.ResumeWorkflow: lambda wf, cmd, _: wf.resume(),
    c.CompleteWorkflow: lambda wf, cmd, _: wf.complete(cmd.actor, cmd.reason),
    c.FailWorkflow: lambda wf, cmd, _: wf.fail(cmd.reason),
    c.CancelWorkflow: lambda wf, cmd, _: wf.cancel(cmd.reason),
    c.AddTask: _add_task,
    c.RemoveTask: lambda wf, cmd, _: wf.remove_task(str(cmd.task_id)),
    c.StartTask: lambda wf, cmd, _: wf.start_task(str(cmd.task_id)),
    c.CompleteTask: lambda wf, cmd, _: wf.complete_task(str(cmd.task_id), cmd.result_summary),
    c.FailTask: lambda wf, cmd, _: wf.fail_task(str(cmd.task_id), cmd.error),
    c.RetryTask: lambda wf, cmd, settings: wf.retry_task(str(cmd.task_id), settings.max_task_attempts),
}


def decide(wf: ResearchWorkflow, cmd: c.WorkflowCommand, settings: Settings) -> list[DomainEvent]:
    """The events `cmd` produces on `wf` (raises DomainRuleViolation when a rule forbids it)."""
    handler = WORKFLOW_HANDLERS.get(type(cmd))
    if handler is None:
        raise ValidationError(f"Unknown command {type(cmd).__name__}.")
    return handler(wf, cmd, settings)


# ------------------------------------------------------------ alert commands

AlertHandler = Callable[[Alert, Any, datetime], list[DomainEvent]]

ALERT_HANDLERS: dict[type[c.AlertCommand], AlertHandler] = {
    c.RaiseAlert: lambda alert, cmd, _now: alert.raise_(
        rule=cmd.rule, subject=cmd.subject, severity=cmd.severity, summary=cmd.summary
    ),
    c.AcknowledgeAlert: lambda alert, cmd, _now: alert.acknowledge(cmd.reason),
    c.SnoozeAlert: lambda alert, cmd, now: alert.snooze(cmd.until, cmd.reason, now),
    c.EndAlertSnooze: lambda alert, cmd, now: alert.end_snooze(cmd.reason, now),
    c.ResolveAlert: lambda alert, cmd, _now: alert.resolve(cmd.reason, automatic=cmd.automatic),
    c.RecordAlertAction: lambda alert, cmd, _now: alert.record_action(cmd.action, cmd.reason),
}


def decide_alert(alert: Alert, cmd: c.AlertCommand, now: datetime) -> list[DomainEvent]:
    """The events `cmd` produces on `alert` at `now` (raises DomainRuleViolation when its state
    does not allow it)."""
    handler = ALERT_HANDLERS.get(type(cmd))
    if handler is None:
        raise ValidationError(f"Unknown command {type(cmd).__name__}.")
    return handler(alert, cmd, now)


# ------------------------------------------------------------ operator commands


class Operations(Protocol):
    """What operator commands act on (the projection manager)."""

    def pause(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def request_rebuild(self, name: str) -> None: ...
    def retry_parked(self, ids: list[int] | None = None) -> int: ...
    def discard_parked(self, ids: list[int]) -> int: ...
    def refresh_views(self) -> list: ...


OperatorHandler = Callable[[Operations, Any], object]

OPERATOR_HANDLERS: dict[type[c.Command], OperatorHandler] = {
    c.PauseProjection: lambda ops, cmd: ops.pause(cmd.projection),
    c.ResumeProjection: lambda ops, cmd: ops.resume(cmd.projection),
    c.RebuildProjection: lambda ops, cmd: ops.request_rebuild(cmd.projection),
    c.RetryParkedEvents: lambda ops, cmd: ops.retry_parked(cmd.ids),
    c.DiscardParkedEvents: lambda ops, cmd: ops.discard_parked(cmd.ids),
    c.RefreshStatistics: lambda ops, cmd: ops.refresh_views(),
}

# What an operator command acts on (its result's `aggregate_id`) when it names no projection.
_TARGETS: dict[type[c.Command], str] = {
    c.RetryParkedEvents: "projections",
    c.DiscardParkedEvents: "projections",
    c.RefreshStatistics: "statistics",
}


class ProjectionControl:
    """The handler of operator commands: runs each on the projection manager that `manager`
    returns. The manager is asked for on each command, so a process that never sends one never
    creates it (the service creates it on first use)."""

    def __init__(self, manager: Callable[[], Operations]) -> None:
        self._manager = manager

    @staticmethod
    def target(cmd: c.Command) -> str:
        """What `cmd` acts on: its projection, "projections" (parked events) or "statistics"."""
        if type(cmd) not in OPERATOR_HANDLERS:
            raise ValidationError(f"Unknown command {type(cmd).__name__}.")
        projection = getattr(cmd, "projection", None)
        return projection if isinstance(projection, str) else _TARGETS[type(cmd)]

    def __call__(self, cmd: c.Command) -> None:
        """Run `cmd`'s action (`target` has checked that it is an operator command)."""
        OPERATOR_HANDLERS[type(cmd)](self._manager(), cmd)
