"""Partitioned projections: the units a runner drains, and the live target of one partition.

A projection whose layout (`projection_checkpoints.partitions`, see `eventlog/partitions.py`) is
K > 1 is run as K units, one per partition, each claimed by one process through its own runner
advisory lock (`locks.AdvisoryLocks` shares them out fairly among the live runners). A unit of
an unsplit projection is the projection itself, run exactly as before.

`PartitionTarget` is `LiveTarget` with the partition's own checkpoint row: it reads the same
batches of the whole log (through the process's shared window), applies the events of its own
streams, passes over the rest, and moves its cursor past both, in one transaction per batch. After
each batch it moves the projection's low-water mark (`refresh_low_water`) in a second, short one.
Order within a stream is kept because one partition applies all of a stream's events, in log
order; a projection that needs order across streams says so (`Projection.cross_stream_order`) and
is never split."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.eventlog.partitions import (
    MAX_PARTITIONS,
    lock_partition,
    partition_of,
    refresh_low_water,
    set_partition_checkpoint,
)
from cqrs_core.eventlog.reader import LoggedEvent, SharedLog
from cqrs_core.infra.config import Settings
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine.batches import LiveTarget

log = logging.getLogger(__name__)

# A partition unit's lock name: "<projection>#<partition>/<partitions>" (the layout is part of it,
# so units of two layouts never share a lock).
UNIT_SEPARATOR = "#"


@dataclass(frozen=True)
class Unit:
    """What one runner lock covers: a whole projection (partitions == 1) or one partition of it."""

    name: str
    partition: int = 0
    partitions: int = 1

    @property
    def key(self) -> str:
        if self.partitions == 1:
            return self.name
        return f"{self.name}{UNIT_SEPARATOR}{self.partition}/{self.partitions}"

    @property
    def partitioned(self) -> bool:
        return self.partitions > 1


def units_of(name: str, partitions: int) -> list[Unit]:
    """The units projection `name` runs as under a layout of `partitions`."""
    if partitions <= 1:
        return [Unit(name)]
    return [Unit(name, i, partitions) for i in range(partitions)]


def is_partition_key(key: str) -> bool:
    return UNIT_SEPARATOR in key


def projection_of(key: str) -> str:
    """The projection a unit's key belongs to."""
    return key.split(UNIT_SEPARATOR, 1)[0]


def wanted_partitions(settings: Settings, projection: Projection) -> int:
    """How many partitions the settings ask for `projection` (1 when it needs cross-stream order)."""
    if projection.cross_stream_order:
        return 1
    return max(1, min(MAX_PARTITIONS, settings.partitions_for(projection.name)))


class PartitionTarget(LiveTarget):
    """The live tables and one partition's checkpoint row (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        projection: Projection,
        unit: Unit,
        shared_log: SharedLog | None = None,
        *,
        abandoned: threading.Event | None = None,
    ) -> None:
        super().__init__(engine, projection, shared_log, abandoned=abandoned)
        self.unit = unit
        # Set when the layout changed under this target: the runner reloads it.
        self.layout_changed = False
        self._moved = False
        self._refreshed = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        self._moved = False
        with super().transaction() as conn:
            yield conn
        if self._moved and self._conn is not None:
            try:
                with self._conn.begin():
                    refresh_low_water(self._conn, self.name)
                self._refreshed = True
            except Exception:
                # The batch is committed; the next batch or drain moves the mark instead.
                log.warning("%s: could not move the low-water mark", self.name, exc_info=True)
                self.close()

    def close(self) -> None:
        """The end of a drain: the low-water mark is moved once more if no batch of the drain moved
        it (a partition taken over from a worker that died between its batch and its refresh)."""
        owed = not self._refreshed and not self.layout_changed
        if owed and (self.abandoned is None or not self.abandoned.is_set()):
            try:
                with self.engine.begin() as conn:
                    refresh_low_water(conn, self.name)
                self._refreshed = True
            except Exception:
                log.warning("%s: could not move the low-water mark", self.name, exc_info=True)
        super().close()

    def start(self, conn: Connection) -> LogCursor | None:
        if self.abandoned is not None and self.abandoned.is_set():
            return None
        row = lock_partition(conn, self.name, self.unit.partition, self.unit.partitions)
        if row is None:
            self.layout_changed = True
            return None
        if row.desired_state == "paused" or row.state == "faulted":
            return None
        self._from = LogCursor(int(row.last_txid), row.last_position)
        return self._from

    def skip_positions(self, conn: Connection, events: Sequence[LoggedEvent]) -> set[int]:
        k, mine = self.unit.partitions, self.unit.partition
        return {e.position for e in events if partition_of(e.stream_id, k) != mine}

    def advance(
        self, conn: Connection, cursor: LogCursor, applied: Sequence[LoggedEvent], processed: int
    ) -> None:
        set_partition_checkpoint(
            conn, self.name, self.unit.partition, cursor, len(applied), [e.position for e in applied]
        )
        self._moved = True
