"""What a projection is: a named handler of events that writes its own tables."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

from sqlalchemy import Connection

from cqrs_core.domain.events import STREAM_PREFIX, workflow_id_of
from cqrs_core.event_store import StoredEvent
from cqrs_core.read_models import TableSpec

FailurePolicy = Literal["skip", "fault"]


class ProjectionError(Exception):
    """An event this projection cannot apply (for example a task event for an unknown task)."""


class Projection(ABC):
    """Folds a batch of events into final row states and writes them with set-based SQL.

    `tables` maps each of the projection's table names to the table to write: the live table,
    a rebuild's shadow, or verify's scratch copy. `apply` runs inside the caller's transaction,
    which also moves the checkpoint; it must not commit."""

    name: ClassVar[str]
    tables: ClassVar[tuple[TableSpec, ...]]
    default_failure_policy: ClassVar[FailurePolicy] = "skip"

    @abstractmethod
    def apply(self, conn: Connection, events: Sequence[StoredEvent], tables: Mapping[str, str]) -> None: ...


def workflow_uuid(event: StoredEvent) -> uuid.UUID:
    if not event.stream_id.startswith(STREAM_PREFIX):
        raise ProjectionError(f"event at position {event.position} is not in a workflow stream")
    try:
        return uuid.UUID(workflow_id_of(event.stream_id))
    except ValueError:
        raise ProjectionError(f"stream {event.stream_id[:80]!r} does not name a workflow id") from None


def task_uuid(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ProjectionError(f"{str(value)[:60]!r} is not a task id") from None


def seconds_between(start, end) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()
