"""Which process evaluates the alert rules: the holder of one session-level PostgreSQL advisory
lock, on a dedicated connection. The lock lives as long as that connection: when the leader dies
(even kill -9), the server drops it and the next process that asks takes it.

`hold()` tells three answers apart, which the evaluator needs while the database is down:
True (this process holds it), False (another process does), None (the database cannot be
asked, so nobody can take it over)."""

from __future__ import annotations

import contextlib
import logging

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine

from cqrs_core.projections.engine.locks import JOB_NAMESPACE, dedicated_connection, lock_key

log = logging.getLogger(__name__)

LEADER_LOCK = "alert-evaluator"


class LeaderLock:
    def __init__(self, engine: Engine, name: str = LEADER_LOCK, namespace: int = JOB_NAMESPACE) -> None:
        self._engine = engine
        self._namespace, self._key = namespace, lock_key(name)
        self._conn: psycopg2.extensions.connection | None = None
        self._held = False

    def hold(self) -> bool | None:
        """Take the lock if it is free, or confirm this process still has it."""
        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = dedicated_connection(self._engine, "alert leader")
            with self._conn.cursor() as cur:
                if self._held:
                    # Session locks stack: asking again would take it twice. Ask pg_locks instead.
                    cur.execute(
                        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND pid = pg_backend_pid() AND classid = %s AND objid = %s AND objsubid = 2",
                        (self._namespace, self._key),
                    )
                else:
                    cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._namespace, self._key))
                row = cur.fetchone()
        except psycopg2.Error as exc:
            log.debug("alert leader lock: the database cannot be asked (%s)", type(exc).__name__)
            self._drop()
            return None
        if bool(row and row[0]) and not self._held:
            log.info("this process evaluates the alert rules now")
        self._held = bool(row and row[0])
        return self._held

    def release(self) -> None:
        """Give the lock up, so another process takes over on its next evaluation. Unlocked
        before the connection closes: the server ends a closed session a moment later."""
        if self._held and self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg2.Error), self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s, %s)", (self._namespace, self._key))
        self._drop()

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
