"""What a projection is: a named handler of events that writes its own tables."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

from sqlalchemy import Connection

from cqrs_core.domain.events import STREAM_PREFIX, DomainEvent, event_from_payload, workflow_id_of
from cqrs_core.domain.schema import REGISTRY
from cqrs_core.eventlog.reader import LogEvent, LoggedEvent
from cqrs_core.infra.errors import CorruptStreamError, UnknownEventError
from cqrs_core.read.tables import TableSpec

FailurePolicy = Literal["skip", "fault"]


class ProjectionError(Exception):
    """An event this projection cannot apply (for example a task event for an unknown task)."""


class Projection(ABC):
    """Folds a batch of events into final row states and writes them with set-based SQL.

    A projection folds the domain's typed events (`domain_event`), matching on their classes;
    the logged event around each gives what the domain event does not carry (position, version,
    stream, actor, `occurred_at`).

    `tables` maps each of the projection's table names to the table to write: the live table,
    a rebuild's shadow, or verify's scratch copy. `apply` runs inside the caller's transaction,
    which also moves the checkpoint; it must not commit."""

    name: ClassVar[str]
    tables: ClassVar[tuple[TableSpec, ...]]
    default_failure_policy: ClassVar[FailurePolicy] = "skip"
    # The version of the code that fills the tables: raise it when a change to `apply` or to the
    # tables means the rows written so far are wrong. The engine then rebuilds the projection into
    # shadows and swaps them in by itself (control.ensure_rows requests it; the swap records it).
    version: ClassVar[int] = 1
    # Event types `apply` looks at (None: all), named by their classes (`event_types`). The batch
    # reader decodes only their payloads; the others still pass through the batch (the cursor
    # moves past them).
    handled_types: ClassVar[frozenset[str] | None] = None
    # Per table: the indexes (beyond the primary key) `apply` needs for its own lookups, as
    # CREATE INDEX statements with a `{table}` placeholder. A rebuild's shadow tables get these
    # and nothing more.
    lookup_indexes: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    # A projection whose result depends on the order of events *across* streams (not only within
    # each stream) says so here; it is never split into partitions, whatever the settings say.
    cross_stream_order: ClassVar[bool] = False

    @abstractmethod
    def apply(self, conn: Connection, events: Sequence[LoggedEvent], tables: Mapping[str, str]) -> None: ...

    def applies_to(self, event_type: str, stream_id: str) -> bool:
        """Whether `apply` does anything with such an event (the correlation trace says "applied"
        or "skipped"): by default, whether it handles its type."""
        return self.handled_types is None or event_type in self.handled_types


def event_types(*classes: type[DomainEvent]) -> frozenset[str]:
    """The stored type names of these domain event classes (for `handled_types`): their own names
    and every older name an upcaster renames into one of them."""
    return frozenset(name for cls in classes for name in REGISTRY.stored_names(cls.__name__))


def domain_event(event: LoggedEvent) -> DomainEvent:
    """The typed domain event a logged event carries, decoded from its payload once: a `LogEvent`
    keeps it in its `decoded` slot, so the events of the shared window are decoded once for all
    the projections (decoding is the same for every caller, so a race only decodes twice).
    An older schema version is upcast first (`domain/schema.py`) and the payload validated; an
    unknown type, a version that cannot be brought up to date or a payload that does not fit is a
    `ProjectionError` naming the reason: the batch fails and the event is parked by the
    projection's failure policy, like any event it cannot apply (a retry decodes it again, with
    the upcasters of the code running then)."""
    if type(event) is LogEvent:
        decoded = event.decoded
        if decoded is None:
            decoded = event.decoded = _decode(event)
        return decoded
    return _decode(event)


def _decode(event: LoggedEvent) -> DomainEvent:
    try:
        return event_from_payload(event.event_type, event.payload, schema_version=event.schema_version)
    except UnknownEventError:
        raise ProjectionError(
            f"{event.event_type[:80]!r} at position {event.position} is not an event type this version knows"
        ) from None
    except CorruptStreamError as exc:
        raise ProjectionError(
            f"{event.event_type[:80]} v{event.schema_version} at position {event.position} does not fit its "
            f"event type ({exc.context.get('problem', '')})"
        ) from None


def workflow_uuid(event: LoggedEvent) -> uuid.UUID:
    if not event.stream_id.startswith(STREAM_PREFIX):
        raise ProjectionError(f"event at position {event.position} is not in a workflow stream")
    try:
        return uuid.UUID(workflow_id_of(event.stream_id))
    except ValueError:
        raise ProjectionError(f"stream {event.stream_id[:80]!r} does not name a workflow id") from None


# Parsing ids is a large part of a fold's cost; the same workflow and task ids come back event
# after event, so their canonical text form is remembered (bounded: cleared when it grows big).
_KEY_CACHE_LIMIT = 200_000
_workflow_keys: dict[str, str] = {}
_task_keys: dict[str, str] = {}


def workflow_key(event: LoggedEvent) -> str:
    """The workflow id of an event's stream as canonical text (validated like `workflow_uuid`)."""
    key = _workflow_keys.get(event.stream_id)
    if key is None:
        key = str(workflow_uuid(event))
        if len(_workflow_keys) >= _KEY_CACHE_LIMIT:
            _workflow_keys.clear()
        _workflow_keys[event.stream_id] = key
    return key


def task_key(value: object) -> str:
    """A task id as canonical text (validated like `task_uuid`)."""
    if type(value) is not str:
        return str(task_uuid(value))
    key = _task_keys.get(value)
    if key is None:
        key = str(task_uuid(value))
        if len(_task_keys) >= _KEY_CACHE_LIMIT:
            _task_keys.clear()
        _task_keys[value] = key
    return key


def task_uuid(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ProjectionError(f"{str(value)[:60]!r} is not a task id") from None


def seconds_between(start, end) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()
