"""Loading a batch's current rows with their uuid columns as text.

Projections key their folds by canonical id text (see `base.workflow_key`/`task_key`): parsing
`uuid.UUID`s for every key of every batch cost more than the fold itself, and the rows go back to
the database as JSON text anyway (`read_models.upsert_rows`)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from cqrs_core.infra.db import driver_connection
from cqrs_core.read.tables import TableSpec

_select_cache: dict[tuple[str, str], str] = {}


def _select_sql(spec: TableSpec, table: str) -> str:
    sql = _select_cache.get((spec.name, table))
    if sql is None:
        types = dict(spec.columns)
        cols = ", ".join(f"{c}::text AS {c}" if t == "uuid" else c for c, t in spec.columns)
        where = " AND ".join(f"{c} = ANY(CAST(%(k{i})s AS {types[c]}[]))" for i, c in enumerate(spec.key))
        sql = f"SELECT {cols} FROM {table} WHERE {where}"
        _select_cache[(spec.name, table)] = sql
    return sql


def load_rows_by_text_key(
    conn: Connection, spec: TableSpec, table: str, keys: Sequence[tuple[str, ...]]
) -> list[dict[str, Any]]:
    """The current rows for `keys` (tuples of canonical text), uuid columns as text; missing keys
    are absent. One statement answered by the primary-key index (`= ANY` per key column; for a
    two-column key that is a superset of the pairs, trimmed here)."""
    if not keys:
        return []
    params = {f"k{i}": sorted({k[i] for k in keys}) for i in range(len(spec.key))}
    names = spec.column_names
    rows = [dict(zip(names, r, strict=True)) for r in conn.exec_driver_sql(_select_sql(spec, table), params)]
    if len(spec.key) == 1:
        return rows
    wanted = set(keys)
    return [r for r in rows if tuple(r[c] for c in spec.key) in wanted]


def load_rows_of_workflows(
    conn: Connection, spec: TableSpec, table: str, workflow_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """Every row of these workflows (canonical text ids) in a table whose key starts with
    `workflow_id`, uuid columns as text, in key order (one statement, answered by the primary key)."""
    if not workflow_ids:
        return []
    assert spec.key[0] == "workflow_id", spec.name
    cols = ", ".join(f"{c}::text AS {c}" if t == "uuid" else c for c, t in spec.columns)
    sql = (
        f"SELECT {cols} FROM {table} WHERE workflow_id = ANY(CAST(%(w)s AS uuid[])) "
        f"ORDER BY {', '.join(spec.key)}"
    )
    names = spec.column_names
    return [
        dict(zip(names, r, strict=True)) for r in conn.exec_driver_sql(sql, {"w": sorted(set(workflow_ids))})
    ]


# COPY's text format: backslash, tab, newline and carriage return are escaped; \N is NULL.
COPY_NULL = "\\N"
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def copy_text(value: str) -> str:
    """A text value for COPY's text format (escaped only when it needs it)."""
    if _COPY_SPECIAL.search(value):
        return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)
    return value


def copy_lines(conn: Connection, table: str, columns: Sequence[str], lines: list[str]) -> None:
    """Insert rows given as lines of COPY's text format (fields joined by tabs, each line ending
    in a newline; build text fields with `copy_text`, NULL is `COPY_NULL`) with one COPY: the
    cheapest way into a table for the database, and cheaper than JSON for us. Plain insert
    semantics: a duplicate key fails the batch."""
    if not lines:
        return
    cur = driver_connection(conn.connection).cursor()
    try:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO("".join(lines)))
    finally:
        cur.close()
