"""What a failure while applying events is: the database's (transient: retry later, never park)
or the event's (retry, then isolate and park it), and the one line operators see for it."""

from __future__ import annotations

import psycopg2
import sqlalchemy.exc as sa_exc

from cqrs_core.infra.errors import InfrastructureError, TimeoutError_

# Operator-facing error text is cut here: it is stored (parked_events.error,
# projection_control.last_error) and shown on pages, and a driver message can be long.
ERROR_TEXT_LIMIT = 1000


def is_transient(exc: BaseException) -> bool:
    """Errors of the connection or the server (not of an event): retry later, never park."""
    if isinstance(exc, InfrastructureError | TimeoutError_):
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, psycopg2.OperationalError | psycopg2.InterfaceError)


def describe_error(exc: BaseException) -> str:
    """One line for operators: the error type and the first line of its message (no SQL)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}"[:ERROR_TEXT_LIMIT]
