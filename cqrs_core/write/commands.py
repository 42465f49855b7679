"""Commands (imperative, frozen pydantic models) and the CommandFactory that stamps them.

A command carries who sends it (`actor`, `role`), its own `command_id` (idempotency key) and
a `correlation_id` that follows it into every event it causes."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any, ClassVar, Self

import pydantic
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from cqrs_core.domain.events import EstimateConfidence
from cqrs_core.domain.vocabulary import AlertSeverity, Methodology, Priority, Role, TaskKind
from cqrs_core.infra.errors import validation_error_from
from cqrs_core.infra.ids import new_uuid4

MAX_TAGS = 10
MAX_TAG_LENGTH = 40
MAX_DEPENDENCIES = 50
MAX_TASKS_IN_CREATE = 200


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


def _tags(values: list[str]) -> list[str]:
    seen: list[str] = []
    for raw in values:
        tag = _text(raw)
        if len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"each tag must be at most {MAX_TAG_LENGTH} characters")
        if tag not in seen:
            seen.append(tag)
    if len(seen) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    return seen


Title = Annotated[str, Field(max_length=200), AfterValidator(_text)]
Question = Annotated[str, Field(max_length=2000), AfterValidator(_text)]
Reason = Annotated[str, Field(max_length=500), AfterValidator(_text)]
LongText = Annotated[str, Field(max_length=5000), AfterValidator(_text)]
Name = Annotated[str, Field(max_length=200), AfterValidator(_text)]
Person = Annotated[str, Field(max_length=100), AfterValidator(_text)]
Tags = Annotated[list[str], Field(max_length=MAX_TAGS * 4), AfterValidator(_tags)]


class Command(BaseModel):
    """Base of every command. `required_role` says who may send it (admin may send anything)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    required_role: ClassVar[str] = "researcher"

    command_id: uuid.UUID
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    actor: Person
    role: Role
    # Business time for back-filled data: only a trusted import (the demo seed) may set it in the
    # past; the command bus refuses it otherwise (command_bus.check_business_time).
    occurred_at: AwareDatetime | None = None

    @property
    def command_type(self) -> str:
        return type(self).__name__


class WorkflowCommand(Command):
    workflow_id: uuid.UUID


class NewTask(BaseModel):
    """A task listed in CreateResearchWorkflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    task_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    name: Name
    kind: TaskKind = "other"
    assignee: Person
    estimate_minutes: int | None = Field(default=None, ge=1, le=100_000)
    # How sure the estimate is (optional; only with an estimate).
    estimate_confidence: EstimateConfidence | None = None
    depends_on: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)

    @model_validator(mode="after")
    def _confidence_needs_an_estimate(self) -> Self:
        if self.estimate_confidence is not None and self.estimate_minutes is None:
            raise ValueError(
                "estimate confidence: give the estimate in minutes too, or leave the confidence out"
            )
        return self


class CreateResearchWorkflow(WorkflowCommand):
    title: Title
    research_question: Question
    methodology: Methodology
    tags: Tags = Field(default_factory=list)
    priority: Priority = "normal"
    due_date: date | None = None
    tasks: list[NewTask] = Field(default_factory=list, max_length=MAX_TASKS_IN_CREATE)


class UpdateWorkflowDetails(WorkflowCommand):
    title: Title | None = None
    research_question: Question | None = None
    methodology: Methodology | None = None
    tags: Tags | None = None
    priority: Priority | None = None
    due_date: date | None = None


class StartWorkflow(WorkflowCommand):
    pass


class PauseWorkflow(WorkflowCommand):
    reason: Reason | None = None


class ResumeWorkflow(WorkflowCommand):
    pass


class CompleteWorkflow(WorkflowCommand):
    reason: Reason | None = None


class FailWorkflow(WorkflowCommand):
    reason: Reason


class CancelWorkflow(WorkflowCommand):
    reason: Reason


class AddTask(WorkflowCommand):
    task_id: uuid.UUID
    name: Name
    kind: TaskKind = "other"
    assignee: Person
    estimate_minutes: int | None = Field(default=None, ge=1, le=100_000)
    # How sure the estimate is (optional; only with an estimate).
    estimate_confidence: EstimateConfidence | None = None
    depends_on: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)

    @model_validator(mode="after")
    def _confidence_needs_an_estimate(self) -> Self:
        if self.estimate_confidence is not None and self.estimate_minutes is None:
            raise ValueError(
                "estimate confidence: give the estimate in minutes too, or leave the confidence out"
            )
        return self


class RemoveTask(WorkflowCommand):
    task_id: uuid.UUID


class StartTask(WorkflowCommand):
    task_id: uuid.UUID


class CompleteTask(WorkflowCommand):
    task_id: uuid.UUID
    result_summary: LongText


class FailTask(WorkflowCommand):
    task_id: uuid.UUID
    error: LongText


class RetryTask(WorkflowCommand):
    task_id: uuid.UUID


# ---------------------------------------------------------------- operational commands


class OperatorCommand(Command):
    required_role: ClassVar[str] = "operator"


ProjectionName = Annotated[str, Field(min_length=1, max_length=100)]
MAX_BIGINT = 2**63 - 1


def _parked_id(value: int) -> int:
    if not 1 <= value <= MAX_BIGINT:
        raise ValueError(f"each id must be a parked event's number, a whole number from 1 to {MAX_BIGINT:,}")
    return value


# parked_events.id is a bigint: an id outside its range is a validation error here, not a
# database error later.
ParkedEventId = Annotated[int, Field(strict=True), AfterValidator(_parked_id)]


class PauseProjection(OperatorCommand):
    projection: ProjectionName


class ResumeProjection(OperatorCommand):
    projection: ProjectionName


class RebuildProjection(OperatorCommand):
    projection: ProjectionName


class RetryParkedEvents(OperatorCommand):
    ids: list[ParkedEventId] | None = Field(default=None, max_length=10_000)  # None = all parked


class DiscardParkedEvents(OperatorCommand):
    ids: list[ParkedEventId] = Field(min_length=1, max_length=10_000)


class RefreshStatistics(OperatorCommand):
    pass


# ---------------------------------------------------------------- alert commands


class AlertCommand(OperatorCommand):
    """A step in one alert's lifecycle (`domain/alert.py`). Operators acknowledge and snooze; the
    alert evaluator (acting as the operator "alerts") raises, ends snoozes and resolves."""

    alert_id: uuid.UUID


AlertText = Annotated[str, Field(max_length=1000), AfterValidator(_text)]
RuleName = Annotated[str, Field(max_length=100), AfterValidator(_text)]


class RaiseAlert(AlertCommand):
    rule: RuleName
    subject: AlertText
    severity: AlertSeverity
    summary: AlertText


class AcknowledgeAlert(AlertCommand):
    reason: Reason


class SnoozeAlert(AlertCommand):
    until: AwareDatetime
    reason: Reason


class EndAlertSnooze(AlertCommand):
    reason: Reason


class ResolveAlert(AlertCommand):
    reason: Reason
    automatic: bool = False  # True: the evaluator found the condition cleared


class RecordAlertAction(AlertCommand):
    """What the evaluator did about an open alert's condition (an auto-restart), for its history."""

    action: RuleName
    reason: AlertText


ALERT_COMMANDS: tuple[type[AlertCommand], ...] = (
    RaiseAlert,
    AcknowledgeAlert,
    SnoozeAlert,
    EndAlertSnooze,
    ResolveAlert,
    RecordAlertAction,
)

WORKFLOW_COMMANDS: tuple[type[WorkflowCommand], ...] = (
    CreateResearchWorkflow,
    UpdateWorkflowDetails,
    StartWorkflow,
    PauseWorkflow,
    ResumeWorkflow,
    CompleteWorkflow,
    FailWorkflow,
    CancelWorkflow,
    AddTask,
    RemoveTask,
    StartTask,
    CompleteTask,
    FailTask,
    RetryTask,
)
OPERATOR_COMMANDS: tuple[type[OperatorCommand], ...] = (
    PauseProjection,
    ResumeProjection,
    RebuildProjection,
    RetryParkedEvents,
    DiscardParkedEvents,
    RefreshStatistics,
)


def build(cls: type[Command], **fields: Any) -> Command:
    try:
        return cls(**fields)
    except pydantic.ValidationError as exc:
        raise validation_error_from(exc) from None


class CommandFactory:
    """Builds stamped commands for one actor: `CommandFactory(actor="alice", role="researcher")`.

    Every method takes keyword arguments, stamps a fresh `command_id` (or the one you pass, to
    retry safely) and the factory's `correlation_id` (or the one you pass)."""

    def __init__(
        self, actor: str, role: str = "researcher", correlation_id: uuid.UUID | str | None = None
    ) -> None:
        self.actor = actor
        self.role = role
        self.correlation_id = correlation_id

    def _make(self, cls: type[Command], **fields: Any) -> Any:
        if "command_id" not in fields:
            fields["command_id"] = new_uuid4()
        if fields.get("correlation_id") is None:
            fields["correlation_id"] = self.correlation_id or new_uuid4()
        fields = {k: v for k, v in fields.items() if v is not None or k in ("due_date",)}
        return build(cls, actor=self.actor, role=self.role, **fields)

    # workflows
    def create_research_workflow(
        self,
        *,
        title: str,
        research_question: str,
        methodology: str,
        tags: list[str] | None = None,
        priority: str = "normal",
        due_date: date | str | None = None,
        tasks: list[dict[str, Any]] | None = None,
        workflow_id: uuid.UUID | str | None = None,
        **stamp: Any,
    ) -> CreateResearchWorkflow:
        return self._make(
            CreateResearchWorkflow,
            workflow_id=workflow_id or new_uuid4(),
            title=title,
            research_question=research_question,
            methodology=methodology,
            tags=tags or [],
            priority=priority,
            due_date=due_date,
            tasks=tasks or [],
            **stamp,
        )

    def update_workflow_details(self, *, workflow_id, **changes: Any) -> UpdateWorkflowDetails:
        return self._make(UpdateWorkflowDetails, workflow_id=workflow_id, **changes)

    def start_workflow(self, *, workflow_id, **stamp: Any) -> StartWorkflow:
        return self._make(StartWorkflow, workflow_id=workflow_id, **stamp)

    def pause_workflow(self, *, workflow_id, reason: str | None = None, **stamp: Any) -> PauseWorkflow:
        return self._make(PauseWorkflow, workflow_id=workflow_id, reason=reason, **stamp)

    def resume_workflow(self, *, workflow_id, **stamp: Any) -> ResumeWorkflow:
        return self._make(ResumeWorkflow, workflow_id=workflow_id, **stamp)

    def complete_workflow(self, *, workflow_id, reason: str | None = None, **stamp: Any) -> CompleteWorkflow:
        return self._make(CompleteWorkflow, workflow_id=workflow_id, reason=reason, **stamp)

    def fail_workflow(self, *, workflow_id, reason: str, **stamp: Any) -> FailWorkflow:
        return self._make(FailWorkflow, workflow_id=workflow_id, reason=reason, **stamp)

    def cancel_workflow(self, *, workflow_id, reason: str, **stamp: Any) -> CancelWorkflow:
        return self._make(CancelWorkflow, workflow_id=workflow_id, reason=reason, **stamp)

    # tasks
    def add_task(
        self,
        *,
        workflow_id,
        name: str,
        kind: str = "other",
        assignee: str,
        estimate_minutes: int | None = None,
        depends_on: list | None = None,
        task_id: uuid.UUID | str | None = None,
        estimate_confidence: str | None = None,
        **stamp: Any,
    ) -> AddTask:
        return self._make(
            AddTask,
            workflow_id=workflow_id,
            task_id=task_id or new_uuid4(),
            name=name,
            kind=kind,
            assignee=assignee,
            estimate_minutes=estimate_minutes,
            estimate_confidence=estimate_confidence,
            depends_on=depends_on or [],
            **stamp,
        )

    def remove_task(self, *, workflow_id, task_id, **stamp: Any) -> RemoveTask:
        return self._make(RemoveTask, workflow_id=workflow_id, task_id=task_id, **stamp)

    def start_task(self, *, workflow_id, task_id, **stamp: Any) -> StartTask:
        return self._make(StartTask, workflow_id=workflow_id, task_id=task_id, **stamp)

    def complete_task(self, *, workflow_id, task_id, result_summary: str, **stamp: Any) -> CompleteTask:
        return self._make(
            CompleteTask, workflow_id=workflow_id, task_id=task_id, result_summary=result_summary, **stamp
        )

    def fail_task(self, *, workflow_id, task_id, error: str, **stamp: Any) -> FailTask:
        return self._make(FailTask, workflow_id=workflow_id, task_id=task_id, error=error, **stamp)

    def retry_task(self, *, workflow_id, task_id, **stamp: Any) -> RetryTask:
        return self._make(RetryTask, workflow_id=workflow_id, task_id=task_id, **stamp)

    # operations
    def pause_projection(self, *, projection: str, **stamp: Any) -> PauseProjection:
        return self._make(PauseProjection, projection=projection, **stamp)

    def resume_projection(self, *, projection: str, **stamp: Any) -> ResumeProjection:
        return self._make(ResumeProjection, projection=projection, **stamp)

    def rebuild_projection(self, *, projection: str, **stamp: Any) -> RebuildProjection:
        return self._make(RebuildProjection, projection=projection, **stamp)

    def retry_parked_events(self, *, ids: list[int] | None = None, **stamp: Any) -> RetryParkedEvents:
        return self._make(RetryParkedEvents, ids=ids, **stamp)

    def discard_parked_events(self, *, ids: list[int], **stamp: Any) -> DiscardParkedEvents:
        return self._make(DiscardParkedEvents, ids=ids, **stamp)

    def refresh_statistics(self, **stamp: Any) -> RefreshStatistics:
        return self._make(RefreshStatistics, **stamp)

    # alerts
    def raise_alert(
        self, *, rule: str, subject: str, severity: str, summary: str, alert_id=None, **stamp: Any
    ) -> RaiseAlert:
        return self._make(
            RaiseAlert,
            alert_id=alert_id or new_uuid4(),
            rule=rule,
            subject=subject,
            severity=severity,
            summary=summary,
            **stamp,
        )

    def acknowledge_alert(self, *, alert_id, reason: str, **stamp: Any) -> AcknowledgeAlert:
        return self._make(AcknowledgeAlert, alert_id=alert_id, reason=reason, **stamp)

    def snooze_alert(self, *, alert_id, until, reason: str, **stamp: Any) -> SnoozeAlert:
        return self._make(SnoozeAlert, alert_id=alert_id, until=until, reason=reason, **stamp)

    def end_alert_snooze(self, *, alert_id, reason: str, **stamp: Any) -> EndAlertSnooze:
        return self._make(EndAlertSnooze, alert_id=alert_id, reason=reason, **stamp)

    def resolve_alert(self, *, alert_id, reason: str, automatic: bool = False, **stamp: Any) -> ResolveAlert:
        return self._make(ResolveAlert, alert_id=alert_id, reason=reason, automatic=automatic, **stamp)

    def record_alert_action(self, *, alert_id, action: str, reason: str, **stamp: Any) -> RecordAlertAction:
        return self._make(RecordAlertAction, alert_id=alert_id, action=action, reason=reason, **stamp)
