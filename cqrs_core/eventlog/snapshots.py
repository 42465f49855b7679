"""The snapshot store: a stream's folded state at a version (`aggregate_snapshots`, migration 0011).

A snapshot is a cache of a replay, never a source of truth: the command side reads it in the same
statement as the events after it (`write/command_bus.py`), and ignores it unless its schema
version and fingerprint are the code's own and its `event_id` is the stream's event at its version.
The store knows nothing of what the state means; the aggregate reads and writes it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class Snapshot:
    stream_id: str
    version: int
    event_id: uuid.UUID  # the stream's event at `version`: the one this state includes last
    schema_version: int
    fingerprint: str
    state: Mapping[str, Any]
    taken_at: datetime | None = None


# A newer snapshot replaces the stored one, and so does any snapshot when the stored one is of
# other code or of another history of the stream (its event is no longer the stream's at its
# version: the log was reset and the stream written again). An older one of the same code and
# history never overwrites a newer one (two writers may race).
_SAVE_SQL = text(
    """INSERT INTO aggregate_snapshots (stream_id, version, event_id, schema_version, fingerprint, state)
       VALUES (:stream_id, :version, :event_id, :schema_version, :fingerprint, CAST(:state AS jsonb))
       ON CONFLICT (stream_id) DO UPDATE
       SET version = EXCLUDED.version, event_id = EXCLUDED.event_id,
           schema_version = EXCLUDED.schema_version, fingerprint = EXCLUDED.fingerprint,
           state = EXCLUDED.state, taken_at = now()
       WHERE aggregate_snapshots.version < EXCLUDED.version
          OR aggregate_snapshots.fingerprint <> EXCLUDED.fingerprint
          OR aggregate_snapshots.schema_version <> EXCLUDED.schema_version
          OR NOT EXISTS (SELECT 1 FROM events e
                          WHERE e.stream_id = aggregate_snapshots.stream_id
                            AND e.version = aggregate_snapshots.version
                            AND e.event_id = aggregate_snapshots.event_id)"""
)
_SAMPLE_SQL = text(
    """SELECT stream_id, version, event_id, schema_version, fingerprint, state, taken_at
       FROM aggregate_snapshots ORDER BY random() LIMIT :n"""
)
_EVENT_AT_SQL = text("SELECT event_id FROM events WHERE stream_id = :stream_id AND version = :version")


def save_snapshot(conn: Connection, snapshot: Snapshot) -> None:
    conn.execute(
        _SAVE_SQL,
        {
            "stream_id": snapshot.stream_id,
            "version": snapshot.version,
            "event_id": snapshot.event_id,
            "schema_version": snapshot.schema_version,
            "fingerprint": snapshot.fingerprint,
            "state": json.dumps(dict(snapshot.state)),
        },
    )


def sample_snapshots(conn: Connection, n: int) -> list[Snapshot]:
    """Up to `n` snapshots picked at random (what `verify` checks against a replay)."""
    return [
        Snapshot(r.stream_id, r.version, r.event_id, r.schema_version, r.fingerprint, r.state, r.taken_at)
        for r in conn.execute(_SAMPLE_SQL, {"n": n})
    ]


def event_id_at(conn: Connection, stream_id: str, version: int) -> uuid.UUID | None:
    return conn.execute(_EVENT_AT_SQL, {"stream_id": stream_id, "version": version}).scalar()
