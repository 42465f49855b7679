"""Who runs a projection: PostgreSQL session-level advisory locks on dedicated connections.

A session-level lock lives exactly as long as the connection that took it. That is the point:
when a worker dies (even kill -9), the server closes its socket and drops its locks, and a
standby that keeps trying `pg_try_advisory_lock` takes over on its next poll. Server-side TCP
keepalives on the lock session make that happen within seconds even when the holder's host
vanishes without closing the socket. The locks only decide who does the work; correctness does not
depend on them, because every batch also locks its checkpoint row (see batches.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator

import psycopg2
import psycopg2.extensions
from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

# Two-key advisory locks: (namespace, crc32 of the projection name). Any constants work; they
# only have to be the same in every process.
RUNNER_NAMESPACE = 7_311_002
REBUILD_NAMESPACE = 7_311_003
JOB_NAMESPACE = 7_311_004  # singleton background jobs (lag sampling, view refresh)
# Every runner's lock session holds one lock here (keyed by its backend pid) for as long as it
# lives: counting them tells each runner how many share the partitions, and its rank among them.
MEMBER_NAMESPACE = 7_311_005

_MEMBERS_SQL = """
    SELECT count(*), count(*) FILTER (WHERE objid::bigint < pg_backend_pid()) FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND classid = %s AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def dedicated_connection(engine: Engine, purpose: str) -> psycopg2.extensions.connection:
    """A raw psycopg2 connection outside the pool, in autocommit, for locks and LISTEN."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    cparams = {
        **cparams,
        "application_name": f"cqrs-console {purpose}"[:63],
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    conn = psycopg2.connect(*cargs, **cparams)
    conn.autocommit = True
    with conn.cursor() as cur:
        # Server side: notice a vanished client after ~11 s so its locks are released.
        cur.execute(
            "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"
        )
    return conn


class AdvisoryLocks:
    """The runner locks one process holds, all on one dedicated connection."""

    def __init__(
        self, engine: Engine, namespace: int = RUNNER_NAMESPACE, recheck_seconds: float = 0.5
    ) -> None:
        self._engine = engine
        self._namespace = namespace
        self._recheck_seconds = recheck_seconds
        self._conn: psycopg2.extensions.connection | None = None
        self._held: set[str] = set()
        self._mutex = threading.Lock()
        self._checked_at = float("-inf")
        self._tried_at: dict[str, float] = {}
        self._members = 1
        self._rank = 0

    def acquire(self, names: Iterable[str], shared: Callable[[str], str | None] | None = None) -> list[str]:
        """Try to take every lock in `names` not held yet; returns those held now (in order).
        Also re-checks the locks held so far: a lost connection means they are gone. Both happen
        at most every `recheck_seconds` (a runner woken by every NOTIFY asks far more often).

        The names for which `shared` gives a group (the partitions of one projection) are shared
        out among the live runners (`MEMBER_NAMESPACE`): of each group this one holds at most its
        share (`_share_of`; the shares of all runners add up to the group) and gives back what it
        holds beyond it (a runner started), so the others take them; when a runner dies, the
        survivors' shares grow and they take the partitions it let go."""
        names = list(names)
        with self._mutex:
            now = time.monotonic()
            try:
                conn = self._conn
                rechecked = conn is None or now - self._checked_at >= self._recheck_seconds
                if rechecked:
                    conn = self._confirm_held()
                    self._checked_at = now
                assert conn is not None
                groups: dict[str, list[str]] = {}
                group_of: dict[str, str] = {}
                for n in names:
                    g = shared(n) if shared is not None else None
                    if g is not None:
                        groups.setdefault(g, []).append(n)
                        group_of[n] = g
                if groups and rechecked:
                    self._members, self._rank = self._count_members(conn)
                    self._give_back(conn, groups, now)
                with conn.cursor() as cur:
                    for name in names:
                        if (
                            name in self._held
                            or now - self._tried_at.get(name, float("-inf")) < self._recheck_seconds
                        ):
                            continue
                        gname = group_of.get(name)
                        if gname is not None and sum(
                            n in self._held for n in groups[gname]
                        ) >= self._share_of(gname, len(groups[gname])):
                            continue
                        self._tried_at[name] = now
                        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._namespace, lock_key(name)))
                        row = cur.fetchone()
                        assert row is not None  # a SELECT without FROM returns one row
                        if row[0]:
                            log.info("took the runner lock of projection %s", name)
                            self._held.add(name)
            except psycopg2.Error as exc:
                log.warning("lock connection lost (%s); projections released", type(exc).__name__)
                self._drop_connection()
            return [n for n in names if n in self._held]

    def held(self) -> set[str]:
        with self._mutex:
            return set(self._held)

    def members(self) -> int:
        """The live runners at the last count (this one included)."""
        return self._members

    def _share_of(self, group: str, size: int) -> int:
        """This runner's share of a group of `size` names: size // runners, plus one for
        size % runners of the runners, chosen by rank (the order of their lock sessions' pids)
        from an offset that differs by group, so the extra partitions of several projections land
        on different runners. The shares of all runners add up to `size` exactly."""
        members = max(1, self._members)
        extra = (self._rank - zlib.crc32(group.encode())) % members < size % members
        return size // members + (1 if extra else 0)

    @staticmethod
    def _count_members(conn: psycopg2.extensions.connection) -> tuple[int, int]:
        with conn.cursor() as cur:
            cur.execute(_MEMBERS_SQL, (MEMBER_NAMESPACE,))
            row = cur.fetchone()
        if not row or not row[0]:
            return 1, 0
        return int(row[0]), int(row[1])

    def _give_back(
        self, conn: psycopg2.extensions.connection, groups: dict[str, list[str]], now: float
    ) -> None:
        """Release what this runner holds beyond its fair share of each group."""
        with conn.cursor() as cur:
            for gname, group in groups.items():
                mine = sorted(n for n in group if n in self._held)
                for name in mine[self._share_of(gname, len(group)) :]:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (self._namespace, lock_key(name)))
                    self._held.discard(name)
                    self._tried_at[name] = now
                    log.info(
                        "gave back the runner lock of %s (%d runners share the partitions)",
                        name,
                        self._members,
                    )

    def release(self, names: Iterable[str]) -> None:
        """Give back the locks of `names` this runner holds (a partition of a layout gone)."""
        with self._mutex:
            if self._conn is None:
                return
            try:
                with self._conn.cursor() as cur:
                    for name in names:
                        if name in self._held:
                            cur.execute(
                                "SELECT pg_advisory_unlock(%s, %s)", (self._namespace, lock_key(name))
                            )
                            self._held.discard(name)
            except psycopg2.Error as exc:
                log.warning("lock connection lost (%s); projections released", type(exc).__name__)
                self._drop_connection()

    def release_all(self) -> None:
        with self._mutex:
            self._drop_connection()

    def _confirm_held(self) -> psycopg2.extensions.connection:
        """The lock connection (a new one when there was none or it closed)."""
        if self._conn is None or self._conn.closed:
            self._held.clear()
            self._conn = dedicated_connection(self._engine, "projection locks")
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s, pg_backend_pid())", (MEMBER_NAMESPACE,))
            return self._conn
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND classid = %s AND objsubid = 2 AND granted",
                (self._namespace,),
            )
            keys = {row[0] for row in cur.fetchall()}
        lost = {n for n in self._held if lock_key(n) not in keys}
        if lost:
            log.warning("runner locks lost: %s", ", ".join(sorted(lost)))
        self._held -= lost
        return self._conn

    def _drop_connection(self) -> None:
        self._held.clear()
        self._tried_at.clear()
        self._checked_at = float("-inf")
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


def held_in_database(conn: Connection, namespace: int, names: Iterable[str]) -> set[str]:
    """Which of `names` some session of this database holds the advisory lock (namespace, name) of."""
    keys = conn.execute(
        text(
            """
            SELECT objid::bigint FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = :ns
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """
        ),
        {"ns": namespace},
    ).scalars()
    held = set(keys)
    return {n for n in names if lock_key(n) in held}


def is_held(conn: Connection, namespace: int, name: str) -> bool:
    return name in held_in_database(conn, namespace, [name])


@contextlib.contextmanager
def exclusive(engine: Engine, namespace: int, name: str) -> Iterator[bool]:
    """Hold a session-level advisory lock for the duration of the block, if it is free;
    yields whether it was taken. It is unlocked before the dedicated connection closes: closing
    alone would release it only once the server has ended that backend, a moment later, and a
    pass that follows at once would find it still held. (If the unlock cannot be sent, closing
    the connection releases it all the same.)"""
    conn = dedicated_connection(engine, f"{name} lock")
    taken = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (namespace, lock_key(name)))
            row = cur.fetchone()
            assert row is not None  # a SELECT without FROM returns one row
            taken = bool(row[0])
        yield taken
    finally:
        with contextlib.suppress(Exception):
            if taken:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (namespace, lock_key(name)))
        with contextlib.suppress(Exception):
            conn.close()
