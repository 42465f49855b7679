"""The event log: keyset pages of the global log or one stream, and a correlation trace (its
commands, its events and what each projection did with each event)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cqrs_core.domain.events import REGISTRY  # the registry with every event class and upcaster
from cqrs_core.eventlog.cursors import ALL_CHECKPOINTS_SQL, LogCursor, cursors_from_rows
from cqrs_core.infra.errors import NotFoundError
from cqrs_core.read import queries as q
from cqrs_core.read.results import CorrelationTrace, EventLogPage
from cqrs_core.read.sql import SqlReader, single_statement


@single_statement
def event_log(reader: SqlReader, query: q.GetEventLog) -> EventLogPage:
    """One page of the log, keyset by position. For one stream the walk goes down or up its
    (stream_id, version) index instead: within a stream, versions grow with positions (version
    n + 1 is appended after version n was committed), so the cursor's version bounds the range
    and a page deep in a stream of 100,000 events costs what the first one does."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": query.limit + 1}
    if query.stream_id:
        where.append("stream_id = %(stream_id)s")
        params["stream_id"] = query.stream_id
    if query.event_types:
        where.append("event_type = ANY(%(types)s)")
        params["types"] = list(query.event_types)
    if query.correlation_id:
        where.append("correlation_id = %(corr)s::uuid")
        params["corr"] = str(query.correlation_id)
    if query.recorded_from:
        where.append("recorded_at >= %(rf)s")
        params["rf"] = query.recorded_from
    if query.recorded_to:
        where.append("recorded_at <= %(rt)s")
        params["rt"] = query.recorded_to
    filters = list(where)
    ascending = query.after is not None
    # The version of the cursor's event if it belongs to the stream; else no bound (position decides).
    cursor_version = "(SELECT version FROM events WHERE position = %(cursor)s AND stream_id = %(stream_id)s)"
    if ascending:
        where.append("position > %(after)s")
        params["after"] = params["cursor"] = query.after
        if query.stream_id:
            where.append(f"version > COALESCE({cursor_version}, 0)")
    elif query.before is not None:
        where.append("position < %(before)s")
        params["before"] = params["cursor"] = query.before
        if query.stream_id:
            where.append(f"version < COALESCE({cursor_version}, 2147483647)")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    direction = "ASC" if ascending else "DESC"
    key = "version" if query.stream_id else "position"
    total = f"(SELECT count(*) FROM events WHERE {' AND '.join(filters)})" if query.stream_id else "NULL"
    names, found = reader.execute(
        f"""SELECT {total} AS total, p.*
            FROM (SELECT) AS one LEFT JOIN (
                SELECT position, stream_id, version, event_type, schema_version, actor, occurred_at, recorded_at,
                       event_id, command_id, correlation_id, causation_id, payload
                FROM events {clause} ORDER BY {key} {direction} LIMIT %(limit)s) AS p ON true
            ORDER BY p.position {direction}""",
        params,
    )
    count = None if found[0][0] is None else int(found[0][0])
    rows = [dict(zip(names[1:], r[1:], strict=True)) for r in found if r[1] is not None]
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    if not rows or not more:
        return EventLogPage(rows, total=count)
    if ascending:
        return EventLogPage(rows, next_after=rows[-1]["position"], total=count)
    return EventLogPage(rows, next_before=rows[-1]["position"], total=count)


# What a projection did with an event of a trace (`CorrelationTrace.events[i]["outcomes"]`).
APPLIED, SKIPPED, PARKED, DISCARDED, NOT_YET = "applied", "skipped", "parked", "discarded", "not yet"
OUTCOMES = (APPLIED, SKIPPED, PARKED, DISCARDED, NOT_YET)


def outcome(cursor: LogCursor, checkpoint: LogCursor | None, parked: str | None, handles: bool) -> str:
    """What a projection did with the event at `cursor`, from its checkpoint, the status of the
    event's row in `parked_events` for it (None: never parked) and whether it handles the
    event's type. Parked and discarded come first: a "fault" projection stops in front of the
    event it parked (its checkpoint is below it) and moves past it without applying it when the
    event is discarded. A retried event was applied by the retry (or by a rebuild's replay)."""
    if parked in (PARKED, DISCARDED):
        return parked
    if checkpoint is None or cursor > checkpoint:
        return NOT_YET
    if parked == "retried":
        return APPLIED
    return APPLIED if handles else SKIPPED


def correlation_trace(
    reader: SqlReader,
    query: q.GetCorrelationTrace,
    *,
    applies: Mapping[str, Callable[[str, str], bool]] | None = None,
) -> CorrelationTrace:
    """The commands and events of a correlation id, and for every event what each projection did
    with it (`outcome`). `applies` gives, per projection, whether it applies an event of a type
    in a stream (`Projection.applies_to`); the service passes them from the projection registry,
    which the read side cannot import. A projection it does not name is taken to apply every event."""
    corr = str(query.correlation_id)
    commands = reader.rows(
        "SELECT command_id, command_type, actor, aggregate_id, recorded_at, result->>'duration_ms' AS duration_ms "
        "FROM command_log WHERE correlation_id = %(c)s::uuid ORDER BY recorded_at",
        {"c": corr},
    )
    checkpoints = cursors_from_rows(reader.execute(ALL_CHECKPOINTS_SQL)[1])
    events = reader.rows(
        "SELECT position, txid::text AS txid, stream_id, version, event_type, schema_version, actor, recorded_at, "
        "command_id, event_id FROM events WHERE correlation_id = %(c)s::uuid ORDER BY position",
        {"c": corr},
    )
    if not commands and not events:
        raise NotFoundError(f"Nothing was recorded with correlation id {corr}.")
    # Every row, whatever its status: a discarded or retried event says what became of it.
    parked = {
        (r["projection"], r["event_id"]): r["status"]
        for r in reader.rows(
            "SELECT p.projection, p.event_id, p.status FROM parked_events p "
            "WHERE p.event_id IN (SELECT event_id FROM events WHERE correlation_id = %(c)s::uuid)",
            {"c": corr},
        )
    }
    applies = applies or {}

    def handles(name: str, event_type: str, stream_id: str) -> bool:
        check = applies.get(name)
        return check is None or check(event_type, stream_id)

    for e in events:
        cursor = LogCursor(int(e.pop("txid")), e["position"])
        event_id = e.pop("event_id")
        e["outcomes"] = {
            name: outcome(
                cursor,
                at,
                parked.get((name, event_id)),
                handles(name, e["event_type"], e["stream_id"]),
            )
            for name, at in checkpoints.items()
        }
        e["reads_as"] = REGISTRY.reading(e["event_type"], e["schema_version"])  # upcast on reading
    return CorrelationTrace(corr, commands, events, list(checkpoints))
