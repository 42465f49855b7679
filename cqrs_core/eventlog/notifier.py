"""The coalescing append notifier: one NOTIFY on `cqrs_events` for many appends.

The projections' runner LISTENs on `cqrs_events` and wakes when it hears from it (and polls
anyway, in case a notice is lost). Sent from the appending transaction itself, the NOTIFY makes
PostgreSQL serialise every appending commit on one global lock (the notify queue's), which stops
concurrent writers from scaling. The command bus's sessions instead set
`cqrs.append_notify = 'coalesced'` (migration 0016: the trigger then skips them), and the bus
calls `appended()` after each commit; this thread sends one NOTIFY, on its own, for every
appended() since its last one, and at most one per `interval` seconds. The notice always
follows the commit it announces, so the runner never wakes too early and misses it; the added
lag is at most `interval`."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from cqrs_core.infra.db import COALESCED_NOTIFY_SETTING

log = logging.getLogger(__name__)

CHANNEL = "cqrs_events"
__all__ = ["COALESCED_NOTIFY_SETTING", "AppendNotifier"]
NOTIFY_INTERVAL_SECONDS = 0.01


class AppendNotifier:
    """A daemon thread that NOTIFYs `cqrs_events` after `appended()`, at most once per `interval`.
    `engine` is the notifier's own (it keeps one connection checked out; `close` disposes it)."""

    def __init__(self, engine: Engine, interval: float = NOTIFY_INTERVAL_SECONDS) -> None:
        self._engine, self._interval = engine, interval
        self._pending = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conn: PoolProxiedConnection | None = None  # the notifier thread's own

    def appended(self) -> None:
        """An append committed: announce it (soon, with the others of the next `interval`)."""
        # Already set: the thread has yet to clear it, and sends its NOTIFY after clearing, so
        # after this commit too. Setting it again would only take the event's lock.
        if not self._pending.is_set():
            self._pending.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._closed.is_set():
                    self._thread = threading.Thread(target=self._run, name="cqrs-append-notify", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            if self._closed.is_set():
                return
            self._pending.clear()
            self._notify()
            if self._closed.wait(self._interval):
                return

    def _notify(self) -> None:
        # One round trip on a connection of its own in autocommit mode (a pooled checkout would add
        # a ping, a BEGIN and a COMMIT: four statements per notice, measured to cost server CPU at
        # 8 writer processes). Reopened after any failure.
        # A connection the server dropped (a restart) is replaced once at once: the notice is for
        # appends that did commit.
        for attempt in (1, 2):
            fresh = self._conn is None
            try:
                if self._conn is None:
                    self._conn = self._engine.raw_connection()
                    self._conn.dbapi_connection.autocommit = True  # type: ignore[union-attr]
                with self._conn.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
                    cur.execute(f"NOTIFY {CHANNEL}")
                return
            except Exception:  # the runner's poll picks the appends up; the next append tries again
                self._drop_connection(invalidate=True)
                if fresh or attempt == 2:
                    log.warning("could not notify the projections of new events", exc_info=True)
                    return

    def _drop_connection(self, invalidate: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if invalidate:
                conn.invalidate()
            else:
                conn.dbapi_connection.autocommit = False  # type: ignore[union-attr]
                conn.close()
        except Exception:
            log.debug("closing the notifier's connection failed", exc_info=True)

    def close(self) -> None:
        """Send what is pending, then stop the thread."""
        pending = self._pending.is_set()
        self._closed.set()
        self._pending.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if pending:
            self._notify()
        self._drop_connection()
        self._engine.dispose()
