"""The audit timeline's writer: one `operator_actions` row (migration 0010) per operator or admin
action asked for, accepted or refused. The read side lists them (`read/handlers/audit.py`)."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

_INSERT = text(
    "INSERT INTO public.operator_actions (actor, role, action, parameters, outcome, detail) "
    "VALUES (:actor, :role, :action, CAST(:parameters AS jsonb), :outcome, :detail)"
)


def record_action(
    target: Connection | Engine,
    *,
    actor: str,
    role: str,
    action: str,
    parameters: dict[str, Any] | None = None,
    outcome: Literal["accepted", "refused"],
    detail: str | None = None,
) -> None:
    """Write one timeline row. On a connection it joins that transaction (an accepted action is
    recorded exactly when it commits); on an engine it commits by itself. Parameters are stored
    as JSON (values that JSON cannot hold, as their text)."""
    values = {
        "actor": actor,
        "role": role,
        "action": action,
        "parameters": json.dumps(parameters or {}, default=str),
        "outcome": outcome,
        "detail": detail,
    }
    if isinstance(target, Connection):
        target.execute(_INSERT, values)
        return
    with target.begin() as conn:
        conn.execute(_INSERT, values)


def record_refusal(engine: Engine, **fields: Any) -> None:
    """Record a refused action; never raises (a refusal is already on its way to the person, and
    a database that cannot take the row cannot take the action either): a failure is logged."""
    try:
        record_action(engine, outcome="refused", **fields)
    except Exception:
        log.exception(
            "could not record the refused action %s of %s", fields.get("action"), fields.get("actor")
        )
