"""Domain events (past tense). Each is a frozen record; its payload is what goes into
`events.payload`. The stream of a workflow is `workflow-<uuid>`; every task event lives in
its workflow's stream. An alert (`domain/alert.py`) has a stream of its own, `alert-<uuid>`.
Times come from the event row (`occurred_at`), not the payload (a snooze's end, a time the
event is about, is in it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, Literal

import pydantic

from cqrs_core.domain.schema import REGISTRY, upcaster
from cqrs_core.domain.vocabulary import AlertSeverity

STREAM_PREFIX = "workflow-"
ALERT_STREAM_PREFIX = "alert-"


def stream_id_for(workflow_id: str) -> str:
    return f"{STREAM_PREFIX}{workflow_id}"


def workflow_id_of(stream_id: str) -> str:
    return stream_id[len(STREAM_PREFIX) :] if stream_id.startswith(STREAM_PREFIX) else stream_id


def alert_stream_id(alert_id: object) -> str:
    return f"{ALERT_STREAM_PREFIX}{alert_id}"


def is_alert_stream(stream_id: str) -> bool:
    return stream_id.startswith(ALERT_STREAM_PREFIX)


def alert_id_of(stream_id: str) -> str:
    return stream_id[len(ALERT_STREAM_PREFIX) :] if is_alert_stream(stream_id) else stream_id


@dataclass(frozen=True)
class DomainEvent:
    # The version of its payload this code writes; an older stored version is upcast on reading
    # (see `domain/schema.py`), and a change of shape raises it by one with an upcaster below.
    schema_version: ClassVar[int] = 1

    @property
    def event_type(self) -> str:
        return type(self).__name__

    def to_payload(self) -> dict[str, Any]:
        # What dataclasses.asdict gives for these flat events (lists copied), without its
        # recursive deep copy: this runs for every event appended.
        out = {}
        for name in _field_names(self):
            value = getattr(self, name)
            if isinstance(value, list):
                value = list(value)
            elif hasattr(type(value), "__dataclass_fields__"):  # a nested record (TaskEstimate)
                value = _record_dict(value)
            elif isinstance(value, datetime):  # an instant the event is about (a snooze's end)
                value = value.isoformat()
            out[name] = value
        return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _field_names(record: Any) -> tuple[str, ...]:
    """The dataclass's field names, looked up once per class."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:
        names = _FIELD_NAMES.setdefault(type(record), tuple(f.name for f in fields(record)))
    return names


def _record_dict(record: Any) -> dict[str, Any]:
    """dataclasses.asdict of a nested record whose fields hold scalars (its deep copies of them
    are the same objects), without its recursion; asdict itself for any other."""
    out = {}
    for name in _field_names(record):
        value = getattr(record, name)
        if type(value) not in _SCALARS:
            return asdict(record)
        out[name] = value
    return out


@dataclass(frozen=True)
class WorkflowCreated(DomainEvent):
    workflow_id: str
    title: str
    research_question: str
    methodology: str
    tags: list[str]
    priority: str
    owner: str
    due_date: str | None  # ISO date


@dataclass(frozen=True)
class WorkflowDetailsUpdated(DomainEvent):
    """Only the fields that changed are set; the others are None (tags: None = unchanged)."""

    title: str | None = None
    research_question: str | None = None
    methodology: str | None = None
    tags: list[str] | None = None
    priority: str | None = None
    due_date: str | None = None


@dataclass(frozen=True)
class WorkflowStarted(DomainEvent):
    pass


@dataclass(frozen=True)
class WorkflowPaused(DomainEvent):
    reason: str | None = None


@dataclass(frozen=True)
class WorkflowResumed(DomainEvent):
    pass


@dataclass(frozen=True)
class WorkflowCompleted(DomainEvent):
    """`reason` is set when the owner completed it explicitly with tasks still open."""

    reason: str | None = None


@dataclass(frozen=True)
class WorkflowFailed(DomainEvent):
    reason: str


@dataclass(frozen=True)
class WorkflowCancelled(DomainEvent):
    """`cancelled_task_ids`: the open tasks this event cancelled, in logs written before
    TaskCancelled existed; a cancel now appends a TaskCancelled per unfinished task before it and
    leaves this list empty."""

    reason: str
    cancelled_task_ids: list[str] = field(default_factory=list)


EstimateConfidence = Literal["low", "medium", "high"]


@dataclass(frozen=True)
class TaskEstimate:
    """How long a task should take, and how sure its author is (None: not said)."""

    minutes: int
    confidence: EstimateConfidence | None = None

    @classmethod
    def of(cls, minutes: int | None, confidence: EstimateConfidence | None = None) -> TaskEstimate | None:
        return None if minutes is None else cls(minutes, confidence)


@dataclass(frozen=True)
class TaskAdded(DomainEvent):
    """v2: the estimate is structured (minutes and a confidence); v1 had `estimate_minutes`."""

    schema_version: ClassVar[int] = 2

    task_id: str
    name: str
    kind: str
    assignee: str
    estimate: TaskEstimate | None
    depends_on: list[str]

    @property
    def estimate_minutes(self) -> int | None:
        return None if self.estimate is None else self.estimate.minutes


@upcaster("TaskAdded", 1)
def task_added_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v1's `estimate_minutes` becomes an estimate whose confidence nobody gave."""
    minutes = payload.pop("estimate_minutes")
    payload["estimate"] = None if minutes is None else {"minutes": minutes, "confidence": None}
    return payload


@dataclass(frozen=True)
class TaskRemoved(DomainEvent):
    task_id: str


@dataclass(frozen=True)
class TaskStarted(DomainEvent):
    task_id: str
    attempt: int  # 1 on the first start


@dataclass(frozen=True)
class TaskCompleted(DomainEvent):
    task_id: str
    result_summary: str


@dataclass(frozen=True)
class TaskFailed(DomainEvent):
    task_id: str
    error: str
    attempt: int


@dataclass(frozen=True)
class TaskRetried(DomainEvent):
    """A failed task runs again; `attempt` is the new attempt number (status → running)."""

    task_id: str
    attempt: int


@dataclass(frozen=True)
class TaskCancelled(DomainEvent):
    """An unfinished (pending or running) task closed because its workflow ended; appended by the
    command that ends the workflow, just before its end event. `reason`: "workflow completed",
    "workflow failed" or "workflow cancelled"."""

    task_id: str
    reason: str


# ---------------------------------------------------------------- alerts
# Who took each step is the event row's `actor`, when is its `occurred_at`; why is in the payload.


@dataclass(frozen=True)
class AlertRaised(DomainEvent):
    """A rule found something wrong with `subject` (a projection, a view, the database, a job)
    for as long as its hold asks; `summary` says what, in one sentence."""

    rule: str
    subject: str
    severity: AlertSeverity
    summary: str


@dataclass(frozen=True)
class AlertAcknowledged(DomainEvent):
    """Someone is on it."""

    reason: str


@dataclass(frozen=True)
class AlertSnoozed(DomainEvent):
    """Stays open, but is not announced again until `until` (an aware instant)."""

    until: datetime
    reason: str


@dataclass(frozen=True)
class AlertSnoozeEnded(DomainEvent):
    """The snooze ran out while the condition still held: the alert is raised (announced) again."""

    reason: str


@dataclass(frozen=True)
class AlertResolved(DomainEvent):
    """Closed: by the evaluator when the condition cleared (`automatic`), or by a person."""

    reason: str
    automatic: bool = False


@dataclass(frozen=True)
class AlertActionTaken(DomainEvent):
    """The evaluator acted on the alert's condition (`action`, e.g. "auto_restart": it restarted
    the stalled projection's runner, CQRS_ALERT_AUTO_RESTART); `reason` says what it did or why it
    could not. The alert stays as it was: it resolves when the condition clears."""

    action: str
    reason: str


ALERT_EVENTS = (
    AlertRaised,
    AlertAcknowledged,
    AlertSnoozed,
    AlertSnoozeEnded,
    AlertResolved,
    AlertActionTaken,
)

# The events of one task, each naming it by `task_id`.
TASK_EVENTS = (TaskAdded, TaskRemoved, TaskStarted, TaskCompleted, TaskFailed, TaskRetried, TaskCancelled)

EVENT_CLASSES: dict[str, type[DomainEvent]] = {
    cls.__name__: cls
    for cls in (
        WorkflowCreated,
        WorkflowDetailsUpdated,
        WorkflowStarted,
        WorkflowPaused,
        WorkflowResumed,
        WorkflowCompleted,
        WorkflowFailed,
        WorkflowCancelled,
        TaskAdded,
        TaskRemoved,
        TaskStarted,
        TaskCompleted,
        TaskFailed,
        TaskRetried,
        TaskCancelled,
        *ALERT_EVENTS,
    )
}
EVENT_TYPES: frozenset[str] = frozenset(EVENT_CLASSES)


for _cls in EVENT_CLASSES.values():
    REGISTRY.register_event(_cls)


def event_from_payload(
    event_type: str,
    payload: dict[str, Any],
    *,
    stream_id: str | None = None,
    version: int | None = None,
    schema_version: int | None = None,
) -> DomainEvent:
    """The typed event of a stored row, upcast from its `schema_version` (None: the current one)
    and validated. Raises UnknownEventError for a type this code does not know and
    CorruptStreamError for a version it cannot bring up to date or a payload that does not fit
    (`stream_id` and `version`, when given, name the row in the message)."""
    current = _CURRENT.get(event_type)
    if (
        current is not None
        and (schema_version is None or schema_version == current[0])
        and type(payload) is dict
    ):
        try:
            return current[1](payload)
        except pydantic.ValidationError:
            pass  # the full path below names the problem
    return REGISTRY.decode(event_type, payload, schema_version, stream_id=stream_id, version=version)


_CURRENT = REGISTRY.current
