"""Drift findings: what continuous verification found wrong, per projection and stream
(`verification_findings`, migration 0014).

A finding is opened when a pass finds a stream's live rows different from a replay of its events,
updated (columns, values, `seen_at`) each time a later pass finds it different again, and resolved
when a pass finds the stream right (after a rebuild, say). There is at most one open finding per
projection and stream. `open_drift_findings` is what an alert rule or a page reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from cqrs_core.projections.engine.verify import Difference, short_repr

# The pseudo-column a finding names for a row the replay has and the live table lacks, and for a
# live row the replay does not have.
MISSING_ROW = "(missing row)"
EXTRA_ROW = "(extra row)"
# Values in a finding are cut to this many characters, and a finding keeps at most this many
# differing values (its `columns` still names them all).
VALUE_CHARS = 120
MAX_DETAILS = 20


@dataclass(frozen=True)
class DriftDetail:
    """One differing value: in which row (its key), which column, what the replay expected and
    what the live table held (each a cut-short repr)."""

    table: str
    key: Mapping[str, Any]
    column: str
    expected: str
    found: str


@dataclass(frozen=True)
class DriftFinding:
    """A stream whose live rows of a projection differ from a replay of its events."""

    projection: str
    stream_id: str
    columns: tuple[str, ...]  # the differing columns, or MISSING_ROW / EXTRA_ROW
    found_at: datetime
    seen_at: datetime  # the latest pass that found it different
    details: tuple[DriftDetail, ...] = ()
    resolved_at: datetime | None = None
    id: int = 0

    def describe(self) -> str:
        """One line: the projection, the stream and the differing columns."""
        return f"{self.projection} drifted from the log for {self.stream_id}: {', '.join(self.columns)}"


def finding_of(differences: Sequence[Difference]) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The columns and the details a finding records for one stream's differing rows."""
    columns: dict[str, None] = {}
    details: list[dict[str, Any]] = []
    for d in differences:
        if d.kind == "changed":
            assert d.live is not None and d.replay is not None  # a changed row has both sides
            for c in d.columns:
                columns[c] = None
                details.append(_detail(d, c, d.replay.get(c), d.live.get(c)))
        elif d.kind == "missing":
            columns[MISSING_ROW] = None
            details.append(_detail(d, MISSING_ROW, "present", "missing"))
        else:
            columns[EXTRA_ROW] = None
            details.append(_detail(d, EXTRA_ROW, "absent", "present"))
    return tuple(columns), details[:MAX_DETAILS]


def _detail(d: Difference, column: str, expected: Any, found: Any) -> dict[str, Any]:
    return {
        "table": d.table,
        "key": d.key,
        "column": column,
        "expected": short_repr(expected, VALUE_CHARS),
        "found": short_repr(found, VALUE_CHARS),
    }


def record(
    conn: Connection,
    projection: str,
    drifted: Mapping[str, tuple[tuple[str, ...], list[dict[str, Any]]]],
    right: Iterable[str],
) -> tuple[int, int]:
    """In the caller's transaction: open or update a finding for each stream of `drifted`
    (stream id -> columns and details), resolve the open findings of the streams found `right`.
    Returns (findings opened or updated, findings resolved)."""
    resolved = conn.execute(
        text(
            """
            UPDATE verification_findings SET resolved_at = clock_timestamp()
            WHERE resolved_at IS NULL AND projection = :p AND stream_id = ANY(CAST(:s AS text[]))
            """
        ),
        {"p": projection, "s": sorted(right)},
    ).rowcount
    if not drifted:
        return 0, resolved
    rows = [{"s": stream, "c": list(columns), "d": details} for stream, (columns, details) in drifted.items()]
    found = conn.execute(
        text(
            """
            INSERT INTO verification_findings (projection, stream_id, columns, details)
            SELECT :p, f.s, ARRAY(SELECT jsonb_array_elements_text(f.c)), f.d
            FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS f(s text, c jsonb, d jsonb)
            ON CONFLICT (projection, stream_id) WHERE resolved_at IS NULL
            DO UPDATE SET columns = EXCLUDED.columns, details = EXCLUDED.details, seen_at = clock_timestamp()
            """
        ),
        {"p": projection, "rows": json.dumps(rows, default=str)},
    ).rowcount
    return found, resolved


def open_streams(conn: Connection, limit: int) -> list[str]:
    """The streams with an open finding (of any projection), the longest unchecked first."""
    return list(
        conn.execute(
            text(
                """
                SELECT stream_id FROM verification_findings WHERE resolved_at IS NULL
                GROUP BY stream_id ORDER BY min(seen_at), stream_id LIMIT :n
                """
            ),
            {"n": limit},
        ).scalars()
    )


_COLUMNS = "id, projection, stream_id, columns, details, found_at, seen_at, resolved_at"


def open_drift_findings(engine: Engine, limit: int | None = None) -> list[DriftFinding]:
    """The open drift findings, newest first (all, or the first `limit`): each names the
    projection, the stream and the differing columns. What the drift alert rule reads."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM verification_findings WHERE resolved_at IS NULL"
                " ORDER BY found_at DESC, id DESC LIMIT :n"
            ),
            {"n": limit},
        )
        return [_finding(r) for r in rows]


def findings_of_stream(engine: Engine, stream_id: str) -> list[DriftFinding]:
    """Every finding (open or resolved) of one stream, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT {_COLUMNS} FROM verification_findings WHERE stream_id = :s ORDER BY id"),
            {"s": stream_id},
        )
        return [_finding(r) for r in rows]


def _finding(r: Any) -> DriftFinding:
    return DriftFinding(
        projection=r.projection,
        stream_id=r.stream_id,
        columns=tuple(r.columns),
        found_at=r.found_at,
        seen_at=r.seen_at,
        details=tuple(
            DriftDetail(d["table"], d["key"], d["column"], d["expected"], d["found"]) for d in r.details
        ),
        resolved_at=r.resolved_at,
        id=r.id,
    )
