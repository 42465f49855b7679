"""Reset: empty the event log, the command log and every read model, and put every projection
back at the start of the log, through the audited `cqrs_reset_all` (migration 0005)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.errors
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from cqrs_core.eventlog.audit import record_action
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import InfrastructureError
from cqrs_core.projections.registry import PROJECTIONS


@dataclass(frozen=True)
class ResetReport:
    events: int
    commands: int
    tables: tuple[str, ...]


def reset(
    engine: Engine, *, actor: str = "cqrs-console", role: str = "admin", lock_timeout_seconds: float = 10.0
) -> ResetReport:
    """Empty the event log, the command log and every read model, and put every projection back
    at the start of the log — in one transaction, so a failure leaves everything as it was.

    The work is done by `cqrs_reset_all` (migration 0005), a SECURITY DEFINER function only the
    runtime role may call: no session can empty `events` by itself. It records `actor`, the time
    and the counts in `reset_audit`, which a reset never empties; the same transaction puts it on
    the audit timeline (`operator_actions`, as `role`). Deciding who may reset is the
    caller's part (cqrs_core.app.demo: admins only; the command line: whoever runs it locally)."""
    read_models = {spec.name for p in PROJECTIONS.values() for spec in p.tables}
    with translate_db_errors(), engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout_seconds * 1000))}")
        try:
            row = conn.execute(
                text(
                    "SELECT deleted_events, deleted_commands, emptied_tables FROM public.cqrs_reset_all(:actor)"
                ),
                {"actor": actor},
            ).one()
        except OperationalError as exc:
            if isinstance(exc.orig, psycopg2.errors.LockNotAvailable):
                raise InfrastructureError(
                    "Could not reset: another process keeps the tables busy; stop the app and workers, then retry."
                ) from exc
            raise
        if missing := read_models - set(row.emptied_tables):  # raising here rolls the reset back
            raise InfrastructureError(
                "Could not reset: the database does not know every read model yet; run `cqrs-console migrate`.",
                detail=", ".join(sorted(missing)),
            )
        record_action(
            conn,
            actor=actor,
            role=role,
            action="demo.reset",
            outcome="accepted",
            detail=f"deleted {row.deleted_events:,} events and {row.deleted_commands:,} commands, "
            f"emptied {len(row.emptied_tables)} tables",
        )
    return ResetReport(int(row.deleted_events), int(row.deleted_commands), tuple(row.emptied_tables))
