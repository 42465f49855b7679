"""The read-model tables: names, columns, and the set-based SQL that writes a batch of rows.

The DDL lives in migrations/versions/0002_read_models.py; this module describes the same
tables for the code that writes them (projections, rebuilds, verify). A projection can write
into a copy of its table (a rebuild's shadow, verify's scratch table): every statement here takes
the actual table name, which is always one of our own constants plus a fixed suffix.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, text

WORKFLOW_SUMMARY = "workflow_summary"
TASK_SUMMARY = "task_summary"
WORKFLOW_ACTIVITY = "workflow_activity"
ALERT_SUMMARY = "alert_summary"

MATERIALIZED_VIEWS = (
    "stats_daily_throughput",
    "stats_methodology_outcomes",
    "stats_task_kind",
    "stats_assignee_load",
)


@dataclass(frozen=True)
class TableSpec:
    """A read-model table as the writers see it: written columns (generated ones excluded) with
    their SQL types, and the primary key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)


WORKFLOW_SUMMARY_TABLE = TableSpec(
    WORKFLOW_SUMMARY,
    (
        ("workflow_id", "uuid"),
        ("title", "text"),
        ("research_question", "text"),
        ("methodology", "text"),
        ("status", "text"),
        ("priority", "text"),
        ("priority_rank", "smallint"),
        ("owner", "text"),
        ("tags", "text[]"),
        ("due_date", "date"),
        ("created_at", "timestamptz"),
        ("started_at", "timestamptz"),
        ("finished_at", "timestamptz"),
        ("duration_seconds", "double precision"),
        ("task_total", "integer"),
        ("task_pending", "integer"),
        ("task_running", "integer"),
        ("task_completed", "integer"),
        ("task_failed", "integer"),
        ("task_cancelled", "integer"),
        ("progress_pct", "double precision"),
        ("last_activity_at", "timestamptz"),
        ("version", "integer"),
        ("task_statuses", "jsonb"),
        ("paused_at", "timestamptz"),  # while paused: when it was paused
    ),
    ("workflow_id",),
)

TASK_SUMMARY_TABLE = TableSpec(
    TASK_SUMMARY,
    (
        ("workflow_id", "uuid"),
        ("task_id", "uuid"),
        ("name", "text"),
        ("kind", "text"),
        ("assignee", "text"),
        ("status", "text"),
        ("attempts", "integer"),
        ("estimate_minutes", "integer"),
        ("estimate_confidence", "text"),
        ("depends_on", "text[]"),
        ("created_at", "timestamptz"),
        ("started_at", "timestamptz"),
        ("finished_at", "timestamptz"),
        ("duration_seconds", "double precision"),
        ("last_error", "text"),
        ("result_summary", "text"),
        ("added_version", "integer"),  # the stream version of its TaskAdded: tasks list in this order
    ),
    ("workflow_id", "task_id"),
)

WORKFLOW_ACTIVITY_TABLE = TableSpec(
    WORKFLOW_ACTIVITY,
    (
        ("position", "bigint"),
        ("workflow_id", "uuid"),
        ("event_type", "text"),
        ("actor", "text"),
        ("occurred_at", "timestamptz"),
        ("task_id", "uuid"),
        ("task_name", "text"),
        ("correlation_id", "uuid"),
        ("summary", "text"),
    ),
    ("position",),
)


# One row per alert (migration 0015): where it stands and who took its latest steps. Its full
# history, step by step, is its stream in the event log.
ALERT_SUMMARY_TABLE = TableSpec(
    ALERT_SUMMARY,
    (
        ("alert_id", "uuid"),
        ("rule", "text"),
        ("subject", "text"),
        ("severity", "text"),
        ("state", "text"),
        ("summary", "text"),  # what the rule found when it raised the alert
        ("raised_at", "timestamptz"),
        ("acknowledged_by", "text"),
        ("acknowledged_at", "timestamptz"),
        ("snoozed_until", "timestamptz"),
        ("snoozed_by", "text"),
        ("resolved_at", "timestamptz"),
        ("resolved_by", "text"),
        ("last_reason", "text"),  # why the latest step was taken
        ("last_actor", "text"),
        ("updated_at", "timestamptz"),  # when the latest step was taken
        ("version", "integer"),
    ),
    ("alert_id",),
)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a read model")


def rows_json(rows: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps(list(rows), default=_json_default, allow_nan=False)


def upsert_rows(
    conn: Connection,
    spec: TableSpec,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    insert_only: bool = False,
) -> None:
    """Write `rows` (final states) in one statement: INSERT ... SELECT FROM jsonb_to_recordset
    ... ON CONFLICT DO UPDATE. One round trip however many events produced them."""
    if not rows:
        return
    names = spec.column_names
    cols = ", ".join(names)
    record = ", ".join(f"{c} {t}" for c, t in spec.columns)
    sql = f"INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({record})"
    if not insert_only:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c not in spec.key)
        sql += f" ON CONFLICT ({', '.join(spec.key)}) DO UPDATE SET {updates}"
    conn.execute(text(sql), {"rows": rows_json(rows)})


def delete_rows(conn: Connection, spec: TableSpec, table: str, keys: Sequence[Sequence[Any]]) -> None:
    """Delete rows by primary key, all in one statement (index-backed, like `projections.rows.load_rows_by_text_key`)."""
    if not keys:
        return
    key_types = dict(spec.columns)
    arrays = {f"k{i}": [str(k[i]) for k in keys] for i in range(len(spec.key))}
    typed = [f"CAST(:k{i} AS {key_types[c]}[])" for i, c in enumerate(spec.key)]
    where = " AND ".join(f"{c} = ANY({t})" for c, t in zip(spec.key, typed, strict=True))
    if len(spec.key) > 1:
        where += f" AND ({', '.join(spec.key)}) IN (SELECT * FROM unnest({', '.join(typed)}))"
    conn.execute(text(f"DELETE FROM {table} WHERE {where}"), arrays)
