"""The query SQL adapter: how a query handler runs its statement(s) on the bus's connection.

A handler takes a `SqlReader` (an open read-only transaction, opened by `run_handler`) and the query.
Every round trip to the server costs about as much as a small indexed query, so the handlers
the pages call most are written as ONE statement (`@single_statement`): the page and its total,
or a workflow with its tasks and timeline, come back together, with the checkpoint cursors of
the projections read in the same statement (one statement sees one snapshot). The bus then runs
it in the implicit transaction of a single message, with no BEGIN or COMMIT round trips.
A statement whose text never changes can be prepared once per connection (`prepare=True`), except
on a connection that may not prepare (behind a pooler in transaction mode, `db.prepares`)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine

from cqrs_core.eventlog.cursors import LogCursor, checkpoints_json_sql, cursors_from_json
from cqrs_core.infra.db import driver_connection, prepares

log = logging.getLogger(__name__)


def single_statement(handler: Callable) -> Callable:
    """Marks a handler that sends exactly one statement, which selects `reader.cursors_sql` as
    its first column in every row it returns (and returns at least one row)."""
    handler.single_statement = True  # type: ignore[attr-defined]
    return handler


class SqlReader:
    """What a handler reads through: a raw DBAPI cursor inside the read-only transaction of `run_handler`.

    `prologue` (the transaction settings and the statement timeout) is sent in the same message
    as the first statement. `cursors_sql` is a scalar subquery giving the checkpoint cursors of
    the query's projections as JSON; a single-statement handler selects it and hands the value
    to `take_cursors`. `prepared` is the set of statements this database connection has
    prepared (it lives as long as the connection); None: the connection may not prepare, and
    `prepare=True` is ignored."""

    def __init__(
        self,
        cursor: Any,
        prologue: str,
        projections: Sequence[str],
        *,
        timeout_ms: int = 0,
        prepared: set[str] | None = None,
    ) -> None:
        self._cursor = cursor
        self._prologue = prologue
        self._timeout_ms = timeout_ms
        self._prepared = prepared
        self.statements = 0
        self.projections = tuple(projections)
        self.cursors: dict[str, LogCursor] | None = None if self.projections else {}
        self.cursors_sql = f"({checkpoints_json_sql('__projections')})" if self.projections else "NULL"

    def execute(
        self, sql: str, params: Mapping[str, Any] | None = None, *, prepare: bool = False
    ) -> tuple[list[str], list[tuple]]:
        """Run one statement; returns (column names, rows as tuples). Parameters use the
        driver's %(name)s style. `prepare=True` plans the statement once per connection
        (PREPARE, then EXECUTE): for a statement whose text never changes and whose plan does
        not depend on its parameters, planning costs about as much as running it."""
        args = dict(params or {})
        if self.projections:
            args["__projections"] = list(self.projections)
        if prepare and self._prepared is not None:
            sql, args = self._prepared_call(sql, args, self._prepared)
        if self._prologue:
            sql, self._prologue = self._prologue + sql, ""
        self.statements += 1
        self._cursor.execute(sql, args)
        if self._cursor.description is None:
            return [], []
        return [d[0] for d in self._cursor.description], self._cursor.fetchall()

    def _prepared_call(self, sql: str, args: dict[str, Any], prepared: set[str]) -> tuple[str, Any]:
        name, body, names = _prepared_form(sql)
        if name not in prepared:
            # Its own round trip, once per connection; under the timeout, as parsing takes locks.
            self._cursor.execute(
                f"SET LOCAL statement_timeout = {max(1, self._timeout_ms)}; PREPARE {name} AS {body}"
            )
            prepared.add(name)
        return f"EXECUTE {name}({', '.join(['%s'] * len(names))})", tuple(args[n] for n in names)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        names, rows = self.execute(sql, params)
        return [dict(zip(names, r, strict=True)) for r in rows]

    def take_cursors(self, raw: Mapping[str, Sequence[Any]] | None) -> None:
        self.cursors = cursors_from_json(raw)


# What the bus routes a query to: (reader, query) -> result.
Handler = Callable[[SqlReader, Any], Any]

_PARAM = re.compile(r"%\((\w+)\)s")


@functools.lru_cache(maxsize=64)
def _prepared_form(sql: str) -> tuple[str, str, list[str]]:
    """(statement name, body with $n parameters, parameter names in $n order)."""
    names = list(dict.fromkeys(_PARAM.findall(sql)))
    body = _PARAM.sub(lambda m: f"${names.index(m.group(1)) + 1}", sql)
    return "cqrs_q_" + hashlib.sha1(body.encode()).hexdigest()[:16], body, names  # a changed text: a new name


# ---------------------------------------------------------------- running a handler on a connection

_CHECKPOINTS_JSON_SQL = checkpoints_json_sql("names")
_SINGLE_PROLOGUE = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class DroppedConnection(psycopg2.OperationalError):
    """The server closed a pooled connection under a query."""


def run_handler(
    engine: Engine, handler: Handler, query: Any, timeout: float
) -> tuple[Any, dict[str, LogCursor]]:
    """Run `handler` in a read-only REPEATABLE READ transaction under a server-side timeout,
    on the raw driver connection (no per-statement SQLAlchemy result machinery).

    The driver is switched to autocommit for the duration so the transaction settings travel
    in the same message as the first statement instead of costing their own round trips:
    * a single-statement handler: `SET TRANSACTION ...; SET LOCAL statement_timeout = n; <its
      SELECT>` is one message, run by the server as one implicit transaction (one round
      trip; its checkpoint cursors are part of that statement, so of the same snapshot);
    * otherwise `BEGIN ...; SET LOCAL ...; <read the checkpoints>` opens the transaction,
      the handler's statements follow, then COMMIT. The checkpoints and every statement
      share the REPEATABLE READ snapshot, so the cursors describe exactly what was read."""
    ms = max(1, int(timeout * 1000))
    single = getattr(handler, "single_statement", False)
    fairy = engine.raw_connection()
    dbapi = driver_connection(fairy)
    autocommit = dbapi.autocommit  # as the engine configured it; restored on release
    # Forgotten with the connection; None where it may not prepare (behind a pooler).
    prepared = fairy.info.setdefault("cqrs_query_prepared", set()) if prepares(fairy.info) else None
    healthy = False
    try:
        dbapi.autocommit = True
        with dbapi.cursor() as cur:
            if single:
                reader = SqlReader(
                    cur,
                    f"{_SINGLE_PROLOGUE}SET LOCAL statement_timeout = {ms}; ",
                    query.projections,
                    timeout_ms=ms,
                    prepared=prepared,
                )
                value = handler(reader, query)
                if reader.statements != 1:
                    raise AssertionError(
                        f"{handler.__name__} is marked single-statement but sent "
                        f"{reader.statements} statements"
                    )
            else:
                reader = SqlReader(cur, "", query.projections, timeout_ms=ms, prepared=prepared)
                cur.execute(
                    f"{_BEGIN}SET LOCAL statement_timeout = {ms}; {_CHECKPOINTS_JSON_SQL}",
                    {"names": list(query.projections)},
                )
                row = cur.fetchone()
                assert row is not None  # the checkpoints' JSON aggregate is one row
                reader.take_cursors(row[0])
                value = handler(reader, query)
                cur.execute("COMMIT")
        if reader.cursors is None:
            raise AssertionError(f"{handler.__name__} did not read the checkpoint cursors")
        healthy = True
        return value, reader.cursors
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        if dbapi.closed:
            raise DroppedConnection(str(exc)) from exc
        raise
    finally:
        _release(fairy, dbapi, healthy, autocommit)


def _release(fairy: Any, dbapi: Any, healthy: bool, autocommit: bool) -> None:
    """Return the connection to the pool exactly as it was taken: no transaction open, the
    driver's autocommit as before. If that cannot be guaranteed, the connection is discarded."""
    reusable = False
    try:
        if not dbapi.closed:
            if not healthy and dbapi.info.transaction_status != _IDLE:
                with dbapi.cursor() as cur:
                    cur.execute("ROLLBACK")
            dbapi.autocommit = autocommit
            reusable = True
    except Exception:  # noqa: BLE001 - whatever went wrong, this connection is not reusable
        log.debug("discarding a query connection that could not be reset", exc_info=True)
    if reusable:
        fairy.close()
    else:
        fairy.invalidate()


# ---------------------------------------------------------------- JSON rows back to driver types

# Rows nested in one statement come back as JSON; these turn each value back into what the driver
# returns for the column's type, so a nested row equals a row read on its own.
_FROM_JSON: dict[str, Callable[[Any], Any]] = {
    "timestamptz": datetime.fromisoformat,
    "date": date.fromisoformat,
    "uuid": uuid.UUID,
    "double precision": float,  # JSON writes 2.0 as 2
}


def json_converters(columns: Iterable[tuple[str, str]], wanted: Sequence[str]) -> list[tuple[str, Callable]]:
    types = dict(columns)
    return [(c, _FROM_JSON[types[c]]) for c in wanted if types.get(c) in _FROM_JSON]


def rows_from_json(raw: Any, converters: list[tuple[str, Callable]]) -> list[dict[str, Any]]:
    rows = json.loads(raw) if isinstance(raw, str) else (raw or [])
    # A timeline repeats its ids and timestamps: convert each distinct value once.
    memos: list[tuple[str, Callable, dict[Any, Any]]] = [(name, convert, {}) for name, convert in converters]
    for row in rows:
        for name, convert, memo in memos:
            value = row[name]
            if value is not None:
                converted = memo.get(value)
                if converted is None:
                    converted = memo[value] = convert(value)
                row[name] = converted
    return rows
