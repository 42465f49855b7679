"""`verify`'s check of the workflows' snapshots: a sample of them against a fresh replay of their
streams up to their versions.

A snapshot is a cache the command side trusts when its schema version and fingerprint are the
code's own (`domain/workflow.py`). Drift is one it would trust whose state is not what a replay
gives: a bug in `to_snapshot`/`from_snapshot`, a fold changed without the fingerprint noticing, a
row edited by hand. A snapshot of other code, or of a stream written again since, is not drift:
commands ignore it and take a new one."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from cqrs_core.domain.events import workflow_id_of
from cqrs_core.domain.workflow import ResearchWorkflow, snapshot_fingerprint
from cqrs_core.eventlog.snapshots import sample_snapshots
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import CQRSError
from cqrs_core.write.command_bus import replay

DEFAULT_SAMPLE = 50

_STREAM_SQL = text(
    """SELECT version, event_type, schema_version, payload, event_id FROM events
       WHERE stream_id = :stream_id AND version <= :version ORDER BY version"""
)


@dataclass(frozen=True)
class SnapshotDrift:
    stream_id: str
    version: int
    problem: str

    def describe(self) -> str:
        return f"snapshot of {self.stream_id} at version {self.version}: {self.problem}"


@dataclass
class SnapshotCheck:
    checked: int = 0  # snapshots of this code compared with a replay
    ignored: int = 0  # of other code or of a stream written again: commands take them afresh
    drifts: list[SnapshotDrift] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drifts

    def lines(self) -> list[str]:
        verdict = "ok" if self.ok else f"DRIFT: {len(self.drifts)} differ from a replay"
        out = [
            f"aggregate_snapshots: {verdict} ({self.checked} checked against a replay, "
            f"{self.ignored} of other code ignored)"
        ]
        out.extend(f"  {d.describe()}" for d in self.drifts)
        return out


def check_snapshots(engine: Engine, sample: int = DEFAULT_SAMPLE) -> SnapshotCheck:
    """Compare up to `sample` snapshots, picked at random, with a replay of their streams."""
    report = SnapshotCheck()
    current = (ResearchWorkflow.SNAPSHOT_SCHEMA_VERSION, snapshot_fingerprint())
    with translate_db_errors(), engine.begin() as conn:
        for snap in sample_snapshots(conn, sample):
            if (snap.schema_version, snap.fingerprint) != current:
                report.ignored += 1
                continue
            rows = conn.execute(_STREAM_SQL, {"stream_id": snap.stream_id, "version": snap.version}).all()
            if not rows or rows[-1].version != snap.version or rows[-1].event_id != snap.event_id:
                report.ignored += 1  # the log was reset and the stream written again (or not yet)
                continue
            report.checked += 1
            problem = _difference(snap.stream_id, snap.version, snap.state, rows)
            if problem:
                report.drifts.append(SnapshotDrift(snap.stream_id, snap.version, problem))
    return report


def _difference(stream_id: str, version: int, state, rows) -> str | None:
    workflow_id = workflow_id_of(stream_id)
    replayed = ResearchWorkflow(workflow_id)
    try:
        replay(replayed, rows, stream_id)
    except CQRSError as exc:
        return f"its stream no longer replays ({exc.user_message})"
    try:
        stored = ResearchWorkflow.from_snapshot(workflow_id, version, state).to_snapshot()
    except ValueError as exc:
        return f"unreadable, so commands ignore it ({exc})"
    fresh = replayed.to_snapshot()
    differing = sorted(k for k in fresh.keys() | stored.keys() if fresh.get(k) != stored.get(k))
    if not differing:
        return None
    return "differs from a replay in " + ", ".join(differing)
