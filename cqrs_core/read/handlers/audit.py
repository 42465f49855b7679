"""The audit timeline: operator and admin actions (`operator_actions`, written through
`eventlog/audit.py` by the command bus, the reset and the demo controller), newest first."""

from __future__ import annotations

from typing import Any

from cqrs_core.read import queries as q
from cqrs_core.read.results import AuditPage
from cqrs_core.read.sql import SqlReader

COLUMNS = "id, at, actor, role, action, parameters, outcome, detail"


def audit_trail(reader: SqlReader, query: q.GetAuditTrail) -> AuditPage:
    """One page, keyset by id (ids grow with time: one sequence, rows only inserted)."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": query.limit + 1}
    if query.actor is not None:
        where.append("actor = %(actor)s")
        params["actor"] = query.actor
    if query.actions:
        where.append("action = ANY(%(actions)s)")
        params["actions"] = list(query.actions)
    if query.outcome is not None:
        where.append("outcome = %(outcome)s")
        params["outcome"] = query.outcome
    if query.at_from is not None:
        where.append("at >= %(at_from)s")
        params["at_from"] = query.at_from
    if query.at_to is not None:
        where.append("at <= %(at_to)s")
        params["at_to"] = query.at_to
    if query.before is not None:
        where.append("id < %(before)s")
        params["before"] = query.before
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    names, rows = reader.execute(
        f"SELECT {COLUMNS} FROM operator_actions {clause} ORDER BY id DESC LIMIT %(limit)s", params
    )
    entries = [dict(zip(names, r, strict=True)) for r in rows]
    more = len(entries) > query.limit
    entries = entries[: query.limit]
    _, actors = reader.execute("SELECT DISTINCT actor FROM operator_actions ORDER BY 1")
    _, actions = reader.execute("SELECT DISTINCT action FROM operator_actions ORDER BY 1")
    return AuditPage(
        entries,
        next_before=entries[-1]["id"] if more else None,
        actors=[a for (a,) in actors],
        actions=[a for (a,) in actions],
    )
