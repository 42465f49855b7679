"""The append-only event log in PostgreSQL.

Why reading the log needs care: `position` comes from an identity sequence, which hands out
numbers when a row is inserted, not when its transaction commits. Transaction A can take
position 10, transaction B position 11, and B can commit first. A reader that remembers "I have
seen up to 11" would never see 10. The Python `eventsourcing` library avoids this by taking a
table lock on insert, which serialises every writer. We keep writers concurrent instead: each
row records its transaction id (`txid`, `pg_current_xact_id()`), and a reader only takes rows
whose transaction is older than the oldest transaction still running
(`pg_snapshot_xmin(pg_current_snapshot())`). Every such transaction has finished, so that part of
the log can no longer change. The reader walks it in `(txid, position)` order and keeps a
`LogCursor` of the last pair it took; anything committed later has a txid at or above the old
horizon and therefore sorts after the cursor. Nothing is skipped, nothing is read twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2.errors
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from cqrs_core.eventlog import cursors
from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.infra.db import DriverConnection, PreparedStatement, translate_db_errors
from cqrs_core.infra.errors import ConcurrencyError, ValidationError
from cqrs_core.infra.ids import new_uuid4

MAX_STREAM_ID_LENGTH = 200


@dataclass(frozen=True)
class NewEvent:
    event_type: str
    payload: dict[str, Any]
    schema_version: int = 1


@dataclass(frozen=True)
class EventMetadata:
    actor: str
    command_id: uuid.UUID | None = None
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    occurred_at: datetime | None = None  # business time; defaults to the commit clock


@dataclass(frozen=True)
class CommandRecord:
    """The idempotency record written together with a command's events (same statement):
    a repeat of `command_id` finds it and returns the stored result instead of running again.
    `result` is the command's result as the command side defines it (CommandResult.to_json);
    the statement sets its `events` and `position` to the events' stored positions."""

    command_id: uuid.UUID
    command_type: str
    aggregate_id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class StoredEvent:
    position: int
    txid: int
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    payload: dict[str, Any]
    event_id: uuid.UUID
    command_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    causation_id: uuid.UUID | None
    actor: str
    occurred_at: datetime
    recorded_at: datetime

    @property
    def cursor(self) -> LogCursor:
        return LogCursor(self.txid, self.position)


_COLUMNS = (
    "position, txid::text AS txid, stream_id, version, event_type, schema_version, payload, event_id, "
    "command_id, correlation_id, causation_id, actor, occurred_at, recorded_at"
)


@dataclass(frozen=True)
class StreamAppend:
    """One stream's part of `EventStore.append_batch`."""

    stream_id: str
    expected_version: int
    events: Sequence[NewEvent]
    metadata: EventMetadata


# Rows come in as one JSON array; WITH ORDINALITY + ORDER BY makes positions follow the array
# order (so a stream's versions get rising positions). The guard checks, for the first append to
# each stream, that the stream is at the expected version (so a version too high cannot leave a
# gap); the unique (stream_id, version) constraint settles races with concurrent writers.
_BATCH_INSERT_SQL = """
    INSERT INTO events (stream_id, version, event_type, schema_version, payload, event_id,
                        command_id, correlation_id, causation_id, actor, occurred_at)
    SELECT r.s, r.v, r.t, r.sv, r.p, r.id, r.c, r.r, r.k, r.a, COALESCE(r.o, clock_timestamp())
    FROM ROWS FROM (jsonb_to_recordset(CAST(:rows AS jsonb))
                    AS (s text, v int, t text, sv int, p jsonb, id uuid, c uuid, r uuid, k uuid, a text, o timestamptz))
         WITH ORDINALITY AS r(s, v, t, sv, p, id, c, r, k, a, o, n)
    WHERE NOT EXISTS (
        SELECT 1 FROM unnest(CAST(:streams AS text[]), CAST(:expected AS int[])) AS f(stream_id, expected)
        WHERE COALESCE((SELECT max(version) FROM events e WHERE e.stream_id = f.stream_id), 0) <> f.expected)
    ORDER BY r.n
    RETURNING position, txid::text AS txid, event_id::text AS event_id, occurred_at, recorded_at"""

# The command log rows of the same statement: each stores the result a repeat of its command gets
# back (`CommandRecord.result`), with the positions its events just got.
_BATCH_RECORD_SQL = """
    agg AS (
        SELECT command_id, max(position) AS position,
               jsonb_agg(jsonb_build_object('event_type', event_type, 'version', version, 'position', position)
                         ORDER BY version) AS events
        FROM ins GROUP BY command_id),
    logged AS (
        INSERT INTO command_log (command_id, command_type, actor, aggregate_id, correlation_id, result)
        SELECT q.id, q.t, q.a, q.g, q.c,
               q.r || jsonb_build_object('events', agg.events, 'position', agg.position)
        FROM jsonb_to_recordset(CAST(:records AS jsonb))
             AS q(id uuid, t text, a text, g text, c uuid, r jsonb)
        JOIN agg ON agg.command_id = q.id)"""


# The same write for exactly one append of one event (almost every command): typed parameters
# instead of a JSON array, the guard on the one stream (the same `max(version)` check: a stream
# at another version, or emptied by `demo reset` under a cached higher version, gets no row), and
# the command log row built from the one inserted row (the JSON `_BATCH_RECORD_SQL` stores).
_ONE_INSERT_SQL = """
    INSERT INTO events (stream_id, version, event_type, schema_version, payload, event_id,
                        command_id, correlation_id, causation_id, actor, occurred_at)
    SELECT CAST(:s AS text), CAST(:v AS int), CAST(:t AS text), CAST(:sv AS int), CAST(:p AS jsonb),
           CAST(:id AS uuid), CAST(:c AS uuid), CAST(:r AS uuid), CAST(:k AS uuid), CAST(:a AS text),
           COALESCE(CAST(:o AS timestamptz), clock_timestamp())
    WHERE COALESCE((SELECT max(version) FROM events e WHERE e.stream_id = CAST(:s AS text)), 0) = CAST(:e AS int)
    RETURNING position, txid::text AS txid, event_id::text AS event_id, occurred_at, recorded_at"""

_ONE_RECORD_SQL = """
    logged AS (
        INSERT INTO command_log (command_id, command_type, actor, aggregate_id, correlation_id, result)
        SELECT CAST(:c AS uuid), CAST(:ct AS text), CAST(:a AS text), CAST(:g AS text), CAST(:r AS uuid),
               CAST(:q AS jsonb) || jsonb_build_object(
                   'events', jsonb_build_array(jsonb_build_object(
                       'event_type', ins.event_type, 'version', ins.version, 'position', ins.position)),
                   'position', ins.position)
        FROM ins)"""

_ONE_NAMES = ("s", "v", "t", "sv", "p", "id", "c", "r", "k", "a", "o", "e")


# The gap-free walk of the log (module docstring): the events after a cursor, of transactions
# below the horizon, in (txid, position) order. Shared with the projections' reader
# (`eventlog/reader.py`); parameters txid (text), pos and limit, driver style.
LOG_WALK = """
    WHERE (events.txid, events.position) > (CAST(%(txid)s AS xid8), %(pos)s)
      AND events.txid < pg_snapshot_xmin(pg_current_snapshot())
    -- qualified: a bare `txid` would sort by a text output column ('1000' < '999')
    ORDER BY events.txid, events.position
    LIMIT %(limit)s"""


def _row_to_event(row: Any) -> StoredEvent:
    m = row._mapping
    return StoredEvent(
        position=m["position"],
        txid=int(m["txid"]),
        stream_id=m["stream_id"],
        version=m["version"],
        event_type=m["event_type"],
        schema_version=m["schema_version"],
        payload=m["payload"],
        event_id=m["event_id"],
        command_id=m["command_id"],
        correlation_id=m["correlation_id"],
        causation_id=m["causation_id"],
        actor=m["actor"],
        occurred_at=m["occurred_at"],
        recorded_at=m["recorded_at"],
    )


# json.dumps(value, allow_nan=False), built once: given other than default options, json.dumps
# makes a new encoder for every call.
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False


def _sendable_text(value: object) -> bool:
    """Whether the driver can send `value` as a text parameter that PostgreSQL accepts: a str with
    no NUL and no lone surrogate (UTF-8 cannot encode one)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _metadata_params(a: StreamAppend) -> dict[str, Any]:
    """The statement parameters an append's events share: stream, command, correlation and
    causation ids as text, actor, business time."""
    m = a.metadata
    command_id = str(m.command_id) if m.command_id else None
    return {
        "s": a.stream_id,
        "c": command_id,
        "r": str(m.correlation_id) if m.correlation_id else None,
        # A command causes its own events unless it names a cause: its id's text again.
        "k": (command_id if m.causation_id == m.command_id else str(m.causation_id))
        if m.causation_id
        else None,
        "a": m.actor,
        "o": m.occurred_at.isoformat() if m.occurred_at else None,
    }


def _write(
    sql: PreparedStatement,
    conn: Connection | DriverConnection,
    params: dict[str, Any],
    timeout_ms: int | None,
    context: dict[str, Any],
) -> list[Any]:
    """Run an append statement; another writer's event at one of its versions (the unique
    `(stream_id, version)` key) is a ConcurrencyError with `context`."""
    try:
        return sql.rows(conn, params, timeout_ms)
    except IntegrityError as exc:
        if isinstance(exc.orig, psycopg2.errors.UniqueViolation) and "events_stream_version" in str(exc.orig):
            raise ConcurrencyError(**context) from exc
        raise


def _stored(a: StreamAppend, i: int, ev: NewEvent, event_id: uuid.UUID, row: Any) -> StoredEvent:
    """The `i`-th event of append `a` as stored: what the statement returned of it (`row`)."""
    m = a.metadata
    return StoredEvent(
        position=row.position,
        txid=int(row.txid),
        stream_id=a.stream_id,
        version=a.expected_version + i + 1,
        event_type=ev.event_type,
        schema_version=ev.schema_version,
        payload=ev.payload,
        event_id=event_id,
        command_id=m.command_id,
        correlation_id=m.correlation_id,
        causation_id=m.causation_id,
        actor=m.actor,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
    )


@dataclass
class EventStore:
    """append / read_stream / read_log over the `events` table.

    `known_event_types` (when given) rejects event types nobody can project.
    Every method takes an optional `conn` so the command bus can append inside its own
    transaction (together with the command log row)."""

    engine: Engine
    known_event_types: Collection[str] | None = None
    _sql_cache: dict[bool, PreparedStatement] = field(default_factory=dict, repr=False)
    _one_sql_cache: dict[bool, PreparedStatement] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ writing

    def validate(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[NewEvent],
        metadata: EventMetadata,
        check_json: bool = True,
        check_nul: bool = True,
    ) -> list[str]:
        problems: list[str] = []
        if not isinstance(stream_id, str) or not stream_id.strip():
            problems.append("stream id must be a non-empty string")
        elif len(stream_id) > MAX_STREAM_ID_LENGTH:
            problems.append(f"stream id must be at most {MAX_STREAM_ID_LENGTH} characters")
        elif "\x00" in stream_id:
            problems.append("stream id must not contain NUL characters")
        if not isinstance(expected_version, int) or expected_version < 0:
            problems.append("expected version must be an integer ≥ 0")
        if not events:
            problems.append("at least one event is required")
        if not metadata.actor or not str(metadata.actor).strip():
            problems.append("actor is required")
        for i, ev in enumerate(events):
            if not isinstance(ev.event_type, str) or not ev.event_type:
                problems.append(f"event {i + 1}: event type is required")
            elif self.known_event_types is not None and ev.event_type not in self.known_event_types:
                problems.append(f"event {i + 1}: unknown event type {ev.event_type[:60]!r}")
            if not isinstance(ev.payload, dict):
                problems.append(f"event {i + 1}: payload must be a JSON object")
                continue
            try:
                if check_json:  # append_batch checks by serialising the whole batch once
                    json.dumps(ev.payload, allow_nan=False)
            except (TypeError, ValueError) as exc:
                problems.append(f"event {i + 1}: payload is not JSON-serialisable ({str(exc)[:80]})")
                continue
            if check_nul and _contains_nul(ev.payload):
                problems.append(f"event {i + 1}: text must not contain NUL characters")
        return problems

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[NewEvent],
        metadata: EventMetadata,
        conn: Connection | DriverConnection | None = None,
        record: CommandRecord | None = None,
        timeout_ms: int | None = None,
    ) -> list[StoredEvent]:
        """Append `events` to `stream_id`, which must currently be at `expected_version`
        (0 = new stream). Raises ConcurrencyError if another writer got there first,
        ValidationError (writing nothing) for bad input. With `record`, the command log row
        is inserted by the same statement (one round trip for the whole write); `timeout_ms`
        makes the server cancel that statement after so long."""
        return self.append_batch(
            [StreamAppend(stream_id, expected_version, events, metadata)],
            conn=conn,
            records=[record] if record is not None else None,
            timeout_ms=timeout_ms,
        )[0]

    def append_batch(
        self,
        appends: Sequence[StreamAppend],
        conn: Connection | DriverConnection | None = None,
        records: Sequence[CommandRecord] | None = None,
        timeout_ms: int | None = None,
    ) -> list[list[StoredEvent]]:
        """Append to many streams (or several times to one stream, versions chained) with one
        statement: all of it or nothing. Each `StreamAppend` must find its stream at its
        `expected_version` (the first one per stream is checked against the table; the rest must
        follow on from it). Returns the stored events of each append, in order.

        `records` (one per append, each with its append's command id) are the command log rows
        written by the same statement; their results list the positions the events got."""
        # Text with a NUL in a payload is looked for in the statement's JSON (`_append_batch`),
        # where json writes it as \u0000; anything refused here lists every problem, that one too.
        if self._problems(appends, records, check_nul=False):
            raise ValidationError(problems=self._problems(appends, records)[:20])
        if not appends:
            return []
        if conn is None:
            with translate_db_errors(), self.engine.begin() as own:
                return self._append_batch(own, appends, records, timeout_ms)
        return self._append_batch(conn, appends, records, timeout_ms)

    def _problems(
        self, appends: Sequence[StreamAppend], records: Sequence[CommandRecord] | None, check_nul: bool = True
    ) -> list[str]:
        problems: list[str] = []
        following: dict[str, int] = {}
        for i, a in enumerate(appends):
            prefix = f"append {i + 1}: " if len(appends) > 1 else ""
            for problem in self.validate(
                a.stream_id, a.expected_version, a.events, a.metadata, check_json=False, check_nul=check_nul
            ):
                problems.append(prefix + problem)
            if a.stream_id in following and following[a.stream_id] != a.expected_version:
                problems.append(
                    f"{prefix}expected version {a.expected_version} does not follow on from "
                    f"the {following[a.stream_id]} before it in this batch"
                )
            if isinstance(a.expected_version, int) and isinstance(a.events, Sequence):
                following[a.stream_id] = a.expected_version + len(a.events)
            if records is not None and (i >= len(records) or records[i].command_id != a.metadata.command_id):
                problems.append(f"{prefix}its command record must carry the same command id as its metadata")
        if records is not None and len(records) != len(appends):
            problems.append("there must be one command record per append")
        return problems

    def _refuse_nul(self, appends: Sequence[StreamAppend], records: Sequence[CommandRecord] | None) -> None:
        """Raise what `validate` says of these appends if it finds a payload text with a NUL in it."""
        problems = self._problems(appends, records)
        if problems:
            raise ValidationError(problems=problems[:20])

    def _batch_sql(self, with_records: bool) -> PreparedStatement:
        sql = self._sql_cache.get(with_records)
        if sql is None:
            if with_records:
                sql = PreparedStatement(
                    f"""
                    WITH ins AS ({_BATCH_INSERT_SQL}, command_id, version, event_type),
                    {_BATCH_RECORD_SQL}
                    SELECT position, txid, event_id, occurred_at, recorded_at FROM ins""",
                    ("rows", "streams", "expected", "records"),
                )
            else:
                sql = PreparedStatement(_BATCH_INSERT_SQL, ("rows", "streams", "expected"))
            self._sql_cache[with_records] = sql
        return sql

    def _one_sql(self, with_record: bool) -> PreparedStatement:
        sql = self._one_sql_cache.get(with_record)
        if sql is None:
            if with_record:
                sql = PreparedStatement(
                    f"""
                    WITH ins AS ({_ONE_INSERT_SQL}, version, event_type),
                    {_ONE_RECORD_SQL}
                    SELECT position, txid, event_id, occurred_at, recorded_at FROM ins""",
                    (*_ONE_NAMES, "ct", "g", "q"),
                )
            else:
                sql = PreparedStatement(_ONE_INSERT_SQL, _ONE_NAMES)
            self._one_sql_cache[with_record] = sql
        return sql

    def _append_batch(
        self,
        conn: Connection | DriverConnection,
        appends: Sequence[StreamAppend],
        records: Sequence[CommandRecord] | None,
        timeout_ms: int | None,
    ) -> list[list[StoredEvent]]:
        if len(appends) == 1 and len(appends[0].events) == 1:
            record = records[0] if records else None
            a = appends[0]
            texts = (a.stream_id, a.events[0].event_type, a.metadata.actor) + (
                (record.command_type, record.aggregate_id) if record is not None else ()
            )
            # These go to the driver as text parameters. Text with a NUL, a lone surrogate (the
            # driver cannot encode it) or not text goes the general way, inside the statement's
            # JSON, which refuses it as it always has.
            if all(_sendable_text(t) for t in texts):
                return [self._append_one(conn, a, record, timeout_ms)]
        return self._append_general(conn, appends, records, timeout_ms)

    def _append_one(
        self,
        conn: Connection | DriverConnection,
        a: StreamAppend,
        record: CommandRecord | None,
        timeout_ms: int | None,
    ) -> list[StoredEvent]:
        """`_append_general` for one append of one event (what almost every command writes), with
        the statement made for it (`_ONE_INSERT_SQL`): 14–19 % less server CPU per append (issue 18;
        README, Writer processes)."""
        [ev] = a.events
        try:
            serialised = _STRICT_JSON.encode(ev.payload)
        except (TypeError, ValueError) as exc:
            self._refuse_nul([a], [record] if record is not None else None)
            raise ValidationError(f"An event payload is not JSON-serialisable ({str(exc)[:80]}).") from None
        if "\\u0000" in serialised:
            self._refuse_nul([a], [record] if record is not None else None)
        event_id = new_uuid4()
        params: dict[str, Any] = _metadata_params(a)
        params.update(
            v=a.expected_version + 1,
            t=ev.event_type,
            sv=ev.schema_version,
            p=serialised,
            id=event_id.hex,
            e=a.expected_version,
        )
        if record is not None:
            params["ct"] = record.command_type
            params["g"] = record.aggregate_id
            params["q"] = json.dumps(record.result)
        context: dict[str, Any] = {"stream_id": a.stream_id, "expected_version": a.expected_version}
        returned = _write(self._one_sql(record is not None), conn, params, timeout_ms, context)
        if not returned:
            raise ConcurrencyError(**context)
        return [_stored(a, 0, ev, event_id, returned[0])]

    def _append_general(
        self,
        conn: Connection | DriverConnection,
        appends: Sequence[StreamAppend],
        records: Sequence[CommandRecord] | None,
        timeout_ms: int | None,
    ) -> list[list[StoredEvent]]:
        rows: list[dict[str, Any]] = []
        ids: list[uuid.UUID] = []
        firsts: dict[str, int] = {}
        commons: list[dict[str, Any]] = []
        for a in appends:
            firsts.setdefault(a.stream_id, a.expected_version)
            common = _metadata_params(a)
            commons.append(common)
            for i, ev in enumerate(a.events):
                event_id = new_uuid4()
                ids.append(event_id)
                rows.append(
                    {
                        **common,
                        "v": a.expected_version + i + 1,
                        "t": ev.event_type,
                        "sv": ev.schema_version,
                        "p": ev.payload,
                        "id": event_id.hex,
                    }
                )
        try:
            serialised = _STRICT_JSON.encode(rows)
        except (TypeError, ValueError) as exc:
            self._refuse_nul(appends, records)  # validate's refusal comes first, as it always did
            raise ValidationError(f"An event payload is not JSON-serialisable ({str(exc)[:80]}).") from None
        if "\\u0000" in serialised:  # a NUL is written \u0000: no payload holds one where that is absent
            self._refuse_nul(appends, records)
        params: dict[str, Any] = {
            "rows": serialised,
            "streams": list(firsts),
            "expected": list(firsts.values()),
        }
        if records is not None:
            # A record's command id is its append's (append_batch checks): the text made above.
            params["records"] = json.dumps(
                [
                    {
                        "id": common["c"],
                        "t": r.command_type,
                        "a": common["a"],
                        "g": r.aggregate_id,
                        "c": common["r"],
                        "r": r.result,
                    }
                    for r, common in zip(records, commons, strict=True)
                ]
            )
        context: dict[str, Any] = (
            {"stream_id": appends[0].stream_id, "expected_version": appends[0].expected_version}
            if len(appends) == 1
            else {"streams": len(firsts)}
        )
        returned = _write(self._batch_sql(records is not None), conn, params, timeout_ms, context)
        if len(returned) != len(rows):
            raise ConcurrencyError(**context)
        # The event ids come back as text (a uuid column costs the driver a uuid.UUID per row); one
        # row returned for one row sent is that row.
        by_id = {r.event_id: r for r in returned} if len(returned) > 1 else None
        out: list[list[StoredEvent]] = []
        k = 0
        for a in appends:
            stored = []
            for i, ev in enumerate(a.events):
                event_id = ids[k]
                row = by_id[str(event_id)] if by_id is not None else returned[0]
                k += 1
                stored.append(_stored(a, i, ev, event_id, row))
            out.append(stored)
        return out

    # ------------------------------------------------------------ reading

    def read_stream(
        self, stream_id: str, after_version: int = 0, conn: Connection | None = None
    ) -> list[StoredEvent]:
        sql = text(f"SELECT {_COLUMNS} FROM events WHERE stream_id = :s AND version > :v ORDER BY version")
        if conn is not None:
            return [_row_to_event(r) for r in conn.execute(sql, {"s": stream_id, "v": after_version})]
        with translate_db_errors(), self.engine.connect() as own:
            return [_row_to_event(r) for r in own.execute(sql, {"s": stream_id, "v": after_version})]

    def read_log(
        self, after: LogCursor | int | None = None, limit: int = 1000, conn: Connection | None = None
    ) -> list[StoredEvent]:
        """Up to `limit` events after `after`, in gap-free order (see the module docstring).

        `after` is a LogCursor from a previous event (`event.cursor`), or a plain position,
        meaning "after the event at that position"."""
        if limit < 1:
            raise ValidationError("limit must be at least 1")
        if conn is not None:
            return self._read_log(conn, after, limit)
        with translate_db_errors(), self.engine.connect() as own:
            return self._read_log(own, after, limit)

    def _read_log(self, conn: Connection, after, limit: int) -> list[StoredEvent]:
        cursor = self.cursor_of(after, conn)
        rows = conn.exec_driver_sql(
            f"SELECT {_COLUMNS} FROM events {LOG_WALK}",
            {"txid": str(cursor.txid), "pos": cursor.position, "limit": limit},
        )
        return [_row_to_event(r) for r in rows]

    def cursor_of(self, after: LogCursor | int | None, conn: Connection) -> LogCursor:
        if after is None:
            return LogCursor()
        if isinstance(after, LogCursor):
            return after
        if after <= 0:
            return LogCursor()
        cursor = cursors.cursor_at(conn, after)
        if cursor is None:
            raise ValidationError(f"there is no event at position {after}")
        return cursor

    def head(self, conn: Connection | None = None) -> int:
        """The highest position written (committed or not yet visible: a sequence peek is not
        used, so this is the highest committed position)."""
        if conn is not None:
            return cursors.head(conn)
        with translate_db_errors(), self.engine.connect() as own:
            return cursors.head(own)

    def count(self) -> int:
        with translate_db_errors(), self.engine.connect() as own:
            return int(own.execute(text("SELECT count(*) FROM events")).scalar_one())
