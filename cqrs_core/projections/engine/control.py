"""The `projection_control` row of each projection: one home for the SQL of its operator settings
(desired state, failure policy, rebuild requests) and of the runner state other processes read
(owner, heartbeat, running/catching_up/stopped).

The rebuild cursor in the same row is rebuild.py's; the error a parked event leaves there is
parking.py's. Checkpoints (`projection_checkpoints`) are `cqrs_core.eventlog.cursors`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, text

from cqrs_core.eventlog import cursors
from cqrs_core.infra.errors import NotFoundError
from cqrs_core.projections.base import Projection

log = logging.getLogger(__name__)


def ensure_rows(engine: Engine, projections: Iterable[Projection]) -> None:
    """Give each projection its checkpoint row and its control row (with its default failure
    policy and its code's version: a new projection's tables are empty, built by this code)
    unless it has them; then request the rebuild of each whose tables an older version of its code
    filled (the runtime carries it out, and the swap records the version)."""
    with engine.begin() as conn:
        for p in projections:
            cursors.ensure_checkpoint(conn, p.name)
            conn.execute(
                text(
                    """INSERT INTO projection_control (name, failure_policy, code_version) VALUES (:n, :p, :v)
                       ON CONFLICT DO NOTHING"""
                ),
                {"n": p.name, "p": p.default_failure_policy, "v": p.version},
            )
            # A row from before versions were recorded (migration 0011): every projection was at
            # version 1 then.
            conn.execute(
                text(
                    "UPDATE projection_control SET code_version = 1 WHERE name = :n AND code_version IS NULL"
                ),
                {"n": p.name},
            )
            # Only a newer version asks: while an older build still runs beside a newer one (a
            # rolling deploy), it does not undo the newer one's rebuild.
            requested = conn.execute(
                text(
                    """UPDATE projection_control
                          SET rebuild_requested_at = clock_timestamp(), rebuild_error = NULL
                        WHERE name = :n AND code_version < :v AND rebuild_requested_at IS NULL
                       RETURNING code_version"""
                ),
                {"n": p.name, "v": p.version},
            ).scalar()
            if requested is not None:
                log.warning(
                    "projection %s: its tables were filled by version %d of its code, this is version %d; "
                    "rebuild requested",
                    p.name,
                    requested,
                    p.version,
                )


def update(engine: Engine, name: str, assignments: str, **params: object) -> None:
    """Set the columns in `assignments` (SQL written by the caller, values in `params`) of the
    control row of `name`; NotFoundError if it has none."""
    with engine.begin() as conn:
        result = conn.execute(
            text(f"UPDATE projection_control SET {assignments} WHERE name = :n"), {"n": name, **params}
        )
        if result.rowcount != 1:
            raise NotFoundError(f"There is no projection named {name!r}.")


def status_rows(conn: Connection, names: Sequence[str]) -> dict[str, Any]:
    """{name: control row} of `names`, each with the database's clock (`now`) and the number of
    its events waiting in the parked list (`parked`)."""
    return {
        r.name: r
        for r in conn.execute(
            text(
                """
                SELECT p.*, clock_timestamp() AS now,
                       (SELECT count(*) FROM parked_events e
                         WHERE e.projection = p.name AND e.status = 'parked') AS parked
                FROM projection_control p WHERE p.name = ANY(CAST(:names AS text[]))
                """
            ),
            {"names": list(names)},
        )
    }


def requested_rebuilds(engine: Engine) -> list[str]:
    """The projections someone asked to rebuild (and whose rebuild has not finished), by name."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT name FROM projection_control WHERE rebuild_requested_at IS NOT NULL ORDER BY name"
                )
            ).scalars()
        )


def heartbeat(engine: Engine, owner: str, states: Mapping[str, str]) -> None:
    """Record that `owner` runs the projections of `states` now, each running or catching_up (a
    faulted or paused one keeps saying so)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                UPDATE projection_control AS p
                   SET owner = :owner, heartbeat_at = clock_timestamp(),
                       state = CASE WHEN p.state = 'faulted' THEN 'faulted'
                                    WHEN p.desired_state = 'paused' THEN 'paused'
                                    ELSE s.state END
                  FROM unnest(CAST(:names AS text[]), CAST(:states AS text[])) AS s(name, state)
                 WHERE p.name = s.name
                """
            ),
            {"owner": owner, "names": list(states), "states": list(states.values())},
        )


def release(engine: Engine, names: Sequence[str], owner: str) -> None:
    """Mark the projections of `names` that `owner` ran stopped and unowned (a faulted one stays
    faulted)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                UPDATE projection_control
                   SET state = CASE WHEN state = 'faulted' THEN state ELSE 'stopped' END,
                       owner = NULL, heartbeat_at = NULL
                 WHERE name = ANY(CAST(:names AS text[])) AND owner = :owner
                """
            ),
            {"names": list(names), "owner": owner},
        )
