"""Domain events (past tense). Each is a frozen record; its payload is what goes into
`events.payload`. The stream of a workflow is `workflow-<uuid>`; every task event lives in
its workflow's stream. Times come from the event row (`occurred_at`), not the payload."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from cqrs_core.infra.errors import CorruptStreamError, UnknownEventError

STREAM_PREFIX = "workflow-"


def stream_id_for(workflow_id: str) -> str:
    return f"{STREAM_PREFIX}{workflow_id}"


def workflow_id_of(stream_id: str) -> str:
    return stream_id[len(STREAM_PREFIX) :] if stream_id.startswith(STREAM_PREFIX) else stream_id


@dataclass(frozen=True)
class DomainEvent:
    schema_version: ClassVar[int] = 1

    @property
    def event_type(self) -> str:
        return type(self).__name__

    def to_payload(self) -> dict[str, Any]:
        # What dataclasses.asdict gives for these flat events (lists copied), without its
        # recursive deep copy: this runs for every event appended.
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES.setdefault(type(self), tuple(f.name for f in fields(self)))
        out = {}
        for name in names:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, list) else value
        return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


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


@dataclass(frozen=True)
class TaskAdded(DomainEvent):
    task_id: str
    name: str
    kind: str
    assignee: str
    estimate_minutes: int | None
    depends_on: list[str]


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
    )
}
EVENT_TYPES: frozenset[str] = frozenset(EVENT_CLASSES)


def event_from_payload(
    event_type: str, payload: dict[str, Any], *, stream_id: str | None = None, version: int | None = None
) -> DomainEvent:
    """The typed event of a stored row. Raises UnknownEventError for a type this code does not
    know and CorruptStreamError for a payload that does not fit its type (`stream_id` and
    `version`, when given, name the row in the message)."""
    cls = EVENT_CLASSES.get(event_type)
    if cls is None:
        raise UnknownEventError(
            f"The stored event{_where(stream_id, version)} has the unknown type {event_type[:80]!r}, so this "
            "workflow cannot be changed until an operator repairs the stream or an upgrade teaches it that event.",
            event_type=event_type,
            stream_id=stream_id,
            version=version,
        )
    try:
        return cls(**payload)  # the payload as `to_payload` wrote it: exactly the event's fields
    except TypeError:
        pass  # keys it does not know (ignored below), a field missing, or not an object at all
    names = _FIELD_NAMES_OF.get(cls)
    if names is None:
        names = _FIELD_NAMES_OF.setdefault(cls, frozenset(f.name for f in fields(cls)))
    try:
        if not isinstance(payload, dict):
            raise TypeError(f"payload is a {type(payload).__name__}, not an object")
        return cls(**{k: v for k, v in payload.items() if k in names})
    except TypeError as exc:  # a required field is missing
        raise CorruptStreamError(
            f"The stored {event_type} event{_where(stream_id, version)} does not have the fields it needs, so "
            "this workflow cannot be changed until an operator repairs the stream.",
            event_type=event_type,
            stream_id=stream_id,
            version=version,
            problem=str(exc),
        ) from None


def _where(stream_id: str | None, version: int | None) -> str:
    return f" at version {version} of stream {stream_id}" if stream_id is not None else ""


_FIELD_NAMES_OF: dict[type, frozenset[str]] = {}
