"""ProjectionManager: the one object the app, the worker and the CLI use to run and operate the
projections — run batches, report status and lag, pause/resume, rebuild, handle parked events,
refresh the statistics views, answer read-your-writes questions."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, text

from cqrs_core.eventlog import cursors
from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.eventlog.reader import SharedLog
from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import NotFoundError, TimeoutError_, ValidationError
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine import lag, parking, views
from cqrs_core.projections.engine.batches import LiveTarget, RetryPolicy, catch_up_gc, step
from cqrs_core.projections.engine.lag import LagSample
from cqrs_core.projections.engine.locks import REBUILD_NAMESPACE, AdvisoryLocks, held_in_database
from cqrs_core.projections.engine.parking import ParkedEvent
from cqrs_core.projections.engine.rebuild import RebuildResult
from cqrs_core.projections.engine.rebuild import rebuild as run_rebuild
from cqrs_core.projections.engine.views import ViewRefresh
from cqrs_core.projections.registry import PROJECTIONS, get_projection

log = logging.getLogger(__name__)

DEFAULT_REBUILD_BATCH = 1000
HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    state: str  # running | paused | catching_up | rebuilding | faulted | stopped
    position: int  # last position applied (the checkpoint)
    head: int  # highest position in the log
    lag_events: int
    lag_seconds: float  # age of the oldest event not applied yet
    events_per_second: float
    last_error: str | None
    last_error_at: datetime | None
    owner: str | None  # host:pid of the process running it
    rebuild_done: int | None
    rebuild_total: int | None
    rebuild_eta_seconds: float | None
    desired_state: str = "running"
    failure_policy: str = "skip"
    events_applied: int = 0
    parked: int = 0  # events waiting in the parked list
    heartbeat_at: datetime | None = None
    rebuild_events_per_second: float | None = None
    rebuild_requested: bool = False
    rebuild_interrupted: bool = False  # a rebuild stopped part-way; rebuilding again resumes it
    rebuild_error: str | None = None


CATCH_UP_GC_BATCH = 1000  # from this batch size on, a drain counts as catching up


MAX_PARKED_ID = 2**63 - 1  # parked_events.id is a bigint


def _parked_ids(ids: Sequence[int]) -> list[int]:
    """The ids as the database takes them; one out of range (the CLI passes what it was given)
    is a validation error, not a database error."""
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= MAX_PARKED_ID:
            raise ValidationError(
                f"Parked event ids are whole numbers from 1 to {MAX_PARKED_ID:,}; {str(i)[:40]} is not one."
            )
    return list(ids)


class ProjectionManager:
    """Runs and operates the projections against one database. Thread-safe; several managers
    (in several processes) may share a database: each projection is run by the one process
    holding its advisory lock."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        rebuild_batch_size: int = DEFAULT_REBUILD_BATCH,
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.store = EventStore(engine)
        self.projections: dict[str, Projection] = dict(PROJECTIONS)
        self.rebuild_batch_size = rebuild_batch_size
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.retry_policy = RetryPolicy(settings.projection_retry_attempts, settings.projection_retry_backoff)
        self.stale_after = max(5.0, 5 * settings.projection_poll_seconds)
        self._locks = AdvisoryLocks(engine)
        self._run_mutex = threading.Lock()
        self._stop = threading.Event()
        self._rows_ready = False
        self._last_heartbeat = 0.0
        self._states: dict[str, str] = {}
        self._written_states: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None
        # The batch sizes of each projection's latest drain (adaptive, see `_drain`).
        self.batch_sizes: dict[str, list[int]] = {}
        # The projections of this process read the log through one window (see SharedLog).
        self.shared_log = SharedLog(capacity=max(30_000, 6 * settings.projection_max_batch))

    # ------------------------------------------------------------ running

    def run_once(self, name: str | None = None) -> int:
        """Apply every available event for the projections this process can lock (all, or
        `name`), batch by batch, until each is caught up; returns the number of events applied.
        The projections are independent (own tables, own checkpoint), so they run side by side
        in a small thread pool: one waits on the database while another folds its batch."""
        names = self._names(name)
        with self._run_mutex, translate_db_errors():
            self._ensure_rows()
            held = self._locks.acquire(names)
            if not held:
                return 0
            if len(held) == 1:
                applied = self._drain(held[0])
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(len(self.projections), thread_name_prefix="projection")
                futures = [self._pool.submit(self._drain, n) for n in held]
                while wait(futures, timeout=HEARTBEAT_SECONDS).not_done:
                    self._heartbeat(held)
                applied = sum(f.result() for f in futures)  # re-raises the first failure
            self._heartbeat(held, force=self._states_changed(held))
            return applied

    def _drain(self, name: str) -> int:
        """Apply batches to one projection until it is caught up, paused, faulted or stopped.

        Batches start at `checkpoint_interval` events and double, up to `projection_max_batch`,
        while they come back full: a projection that is far behind pays the per-batch cost
        (checkpoint lock, reads, writes, commit) every few thousand events instead of every 50.
        The next drain (caught up, woken by a NOTIFY) starts small again. Each batch still
        commits with its checkpoint, and `step` still isolates a poison event in any batch."""
        projection = self.projections[name]
        target = LiveTarget(self.engine, projection, self.shared_log)
        applied = 0
        size = self.settings.checkpoint_interval
        ceiling = max(size, self.settings.projection_max_batch)
        sizes: list[int] = []
        gc_relaxed = False
        try:
            while not self._stop.is_set():
                result = step(projection, target, self.store, size, self.retry_policy)
                if len(sizes) < 1000:
                    sizes.append(size)
                applied += result.applied
                more = result.full and not result.halted
                self._states[name] = "catching_up" if more else "running"
                if not more:
                    break
                if result.processed >= size:
                    size = min(ceiling, size * 2)
                if not gc_relaxed and size >= CATCH_UP_GC_BATCH:
                    catch_up_gc.enter()
                    gc_relaxed = True
        finally:
            if gc_relaxed:
                catch_up_gc.leave()
            target.close()
            self.batch_sizes[name] = sizes
        return applied

    def catch_up(self, timeout: float | None = None) -> int:
        """Run until every projection that is not paused or faulted has applied every event
        committed now (waiting for other processes that hold some of them). Returns the events
        this process applied; raises TimeoutError_ after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._ensure_rows()
        target = self._committed_tip()
        applied = 0
        while True:
            applied += self.run_once()
            if not self._behind(target):
                return applied
            if self._stop.is_set():
                return applied
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError_(
                    f"The projections did not catch up within {timeout:g} s; check `projections status`."
                )
            time.sleep(0.05)

    def request_stop(self) -> None:
        """Make running loops return after their current batch."""
        self._stop.set()

    def close(self, timeout: float | None = None) -> None:
        """Release this process's projections (others take over) and mark them stopped.
        Waits up to `timeout` seconds (None: as long as it takes) for a running batch."""
        self._stop.set()
        got = self._run_mutex.acquire(timeout=-1 if timeout is None else timeout)
        try:
            held = sorted(self._locks.held())
            if held:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(
                            text(
                                """
                                UPDATE projection_control
                                   SET state = CASE WHEN state = 'faulted' THEN state ELSE 'stopped' END,
                                       owner = NULL, heartbeat_at = NULL
                                 WHERE name = ANY(CAST(:names AS text[])) AND owner = :owner
                                """
                            ),
                            {"names": held, "owner": self.owner},
                        )
                except Exception:
                    log.warning("could not mark projections stopped", exc_info=True)
            self._locks.release_all()
            if self._pool is not None:
                self._pool.shutdown(wait=got)
                self._pool = None
        finally:
            if got:
                self._run_mutex.release()

    def reopen(self) -> None:
        """Allow running again after `request_stop`/`close`."""
        self._stop.clear()

    def held(self) -> set[str]:
        """The projections this process runs right now."""
        return self._locks.held()

    # ------------------------------------------------------------ status

    def status(self) -> list[ProjectionStatus]:
        """State, position, head, lag (events and seconds), rate and last error of each projection."""
        self._ensure_rows()
        names = list(self.projections)
        with self.engine.connect() as conn:
            measured = {m.name: m for m in lag.measure(conn, names)}
            rates = lag.latest_rates(conn, names, fresh_seconds=3 * self.settings.lag_sample_seconds + 2)
            rebuilding = held_in_database(conn, REBUILD_NAMESPACE, names)
            rows = {
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
                    {"names": names},
                )
            }
        return [self._status_of(n, rows[n], measured[n], rates.get(n, 0.0), n in rebuilding) for n in names]

    def _status_of(
        self, name: str, row, m: lag.Measurement, rate: float, rebuilding: bool
    ) -> ProjectionStatus:
        now = row.now
        alive = row.heartbeat_at is not None and (now - row.heartbeat_at).total_seconds() < self.stale_after
        # A rebuild is alive exactly while its process holds the rebuild lock.
        rebuild_live = row.rebuild_txid is not None and rebuilding
        if rebuild_live:
            state = "rebuilding"
        elif row.state == "faulted":
            state = "faulted"
        elif row.desired_state == "paused":
            state = "paused"
        elif not alive or row.owner is None:
            state = "stopped"
        else:
            state = row.state if row.state in ("running", "catching_up") else "running"
        done = total = eta = rebuild_rate = None
        if row.rebuild_txid is not None:
            done, total = int(row.rebuild_done or 0), int(row.rebuild_total or 0)
            if rebuild_live and row.rebuild_started_at is not None:
                elapsed = (now - row.rebuild_started_at).total_seconds()
                progressed = done - int(row.rebuild_done_at_start or 0)
                if elapsed > 0 and progressed > 0:
                    rebuild_rate = progressed / elapsed
                    eta = max(0.0, (total - done) / rebuild_rate)
        return ProjectionStatus(
            name=name,
            state=state,
            position=m.position,
            head=m.head,
            lag_events=m.lag_events,
            lag_seconds=m.lag_seconds,
            events_per_second=rate,
            last_error=row.last_error,
            last_error_at=row.last_error_at,
            owner=row.owner if alive else None,
            rebuild_done=done,
            rebuild_total=total,
            rebuild_eta_seconds=eta,
            desired_state=row.desired_state,
            failure_policy=row.failure_policy,
            events_applied=m.events_applied,
            parked=int(row.parked),
            heartbeat_at=row.heartbeat_at,
            rebuild_events_per_second=rebuild_rate,
            rebuild_requested=row.rebuild_requested_at is not None,
            rebuild_interrupted=row.rebuild_txid is not None and not rebuild_live,
            rebuild_error=row.rebuild_error,
        )

    # ------------------------------------------------------------ operating

    def pause(self, name: str) -> None:
        """Stop applying events to `name` after the current batch (its tables keep serving)."""
        self._set_control(name, "desired_state = 'paused'")

    def resume(self, name: str) -> None:
        """Apply events to `name` again; a faulted projection retries the event it stopped at."""
        self._set_control(
            name,
            "desired_state = 'running', state = CASE WHEN state = 'faulted' THEN 'running' ELSE state END",
        )

    def set_failure_policy(self, name: str, policy: str) -> None:
        """What `name` does with an event that keeps failing: "skip" it (parked) or "fault" (stop)."""
        if policy not in ("skip", "fault"):
            raise ValidationError("The failure policy must be 'skip' or 'fault'.")
        self._set_control(name, "failure_policy = :policy", policy=policy)

    def rebuild(
        self,
        name: str,
        progress: Callable[[int, int], None] | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> RebuildResult:
        """Replay the log into shadow tables and swap them in atomically (synchronous). The live
        tables keep serving throughout; `progress(done, total)` is called after every batch."""
        self._ensure_rows()
        return run_rebuild(
            self.engine,
            get_projection(name),
            retry=self.retry_policy,
            batch_size=self.rebuild_batch_size,
            owner=self.owner,
            progress=progress,
            stop=stop,
        )

    def request_rebuild(self, name: str) -> None:
        """Ask the running runtime (in any process) to rebuild `name`."""
        self._set_control(name, "rebuild_requested_at = clock_timestamp(), rebuild_error = NULL")

    def requested_rebuilds(self) -> list[str]:
        self._ensure_rows()
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT name FROM projection_control WHERE rebuild_requested_at IS NOT NULL ORDER BY name"
                    )
                ).scalars()
            )

    def parked(self, projection: str | None = None, status: str | None = "parked") -> list[ParkedEvent]:
        """Parked events (status "parked", "retried", "discarded", or None for all)."""
        return parking.list_parked(self.engine, projection, status)

    def retry_parked(self, ids: list[int] | None = None) -> int:
        """Apply parked events again (all, or `ids`); returns how many succeeded."""
        return parking.retry(self.engine, _parked_ids(ids) if ids is not None else None)

    def discard_parked(self, ids: list[int]) -> int:
        """Give up on parked events; returns how many were discarded."""
        return parking.discard(self.engine, _parked_ids(ids))

    def has_applied(self, conn: Connection, position: int, names: Sequence[str]) -> bool:
        """Read-your-writes: True iff every projection in `names` has applied (or passed) the
        event at `position`, comparing LogCursors (txid, position), not bare positions."""
        if position <= 0:
            return True
        return cursors.has_applied(conn, position, sorted({get_projection(n).name for n in names}))

    # ------------------------------------------------------------ lag and views

    def sample_lag(self, min_interval: float | None = None) -> list[LagSample]:
        """Write one lag sample per projection (position, head, lag, events/s)."""
        self._ensure_rows()
        return lag.sample(self.engine, list(self.projections), min_interval)

    def prune_lag_samples(self) -> int:
        """Delete lag samples older than the retention (settings.lag_retention_minutes)."""
        return lag.prune(self.engine, timedelta(minutes=self.settings.lag_retention_minutes))

    def lag_history(self, projection: str | None, since: datetime) -> list[LagSample]:
        if projection is not None:
            get_projection(projection)
        return lag.history(self.engine, projection, since)

    def refresh_views(self, min_age: float | None = None) -> list[ViewRefresh]:
        """REFRESH MATERIALIZED VIEW CONCURRENTLY each statistics view; records time and duration."""
        return views.refresh_views(self.engine, min_age)

    def view_freshness(self) -> list[ViewRefresh]:
        return views.view_freshness(self.engine)

    # ------------------------------------------------------------ internals

    def _names(self, name: str | None) -> list[str]:
        return list(self.projections) if name is None else [get_projection(name).name]

    def _ensure_rows(self) -> None:
        if self._rows_ready:
            return
        with self.engine.begin() as conn:
            for p in self.projections.values():
                cursors.ensure_checkpoint(conn, p.name)
                conn.execute(
                    text(
                        "INSERT INTO projection_control (name, failure_policy) VALUES (:n, :p) ON CONFLICT DO NOTHING"
                    ),
                    {"n": p.name, "p": p.default_failure_policy},
                )
        self._rows_ready = True

    def _set_control(self, name: str, assignments: str, **params: object) -> None:
        name = get_projection(name).name
        self._ensure_rows()
        with self.engine.begin() as conn:
            result = conn.execute(
                text(f"UPDATE projection_control SET {assignments} WHERE name = :n"), {"n": name, **params}
            )
            if result.rowcount != 1:
                raise NotFoundError(f"There is no projection named {name!r}.")

    def _states_changed(self, held: Sequence[str]) -> bool:
        return {n: self._states.get(n, "running") for n in held} != self._written_states

    def _heartbeat(self, held: Sequence[str], force: bool = False) -> None:
        """Record owner, liveness and running/catching_up state, at most every second unless
        the states changed (a runner woken by every NOTIFY would otherwise write each time)."""
        now = time.monotonic()
        if not held or (not force and now - self._last_heartbeat < HEARTBEAT_SECONDS):
            return
        self._last_heartbeat = now
        self._written_states = {n: self._states.get(n, "running") for n in held}
        with self.engine.begin() as conn:
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
                {
                    "owner": self.owner,
                    "names": list(held),
                    "states": [self._states.get(n, "running") for n in held],
                },
            )

    def _committed_tip(self) -> LogCursor:
        with self.engine.connect() as conn:
            return cursors.committed_tip(conn)

    def _behind(self, target: LogCursor) -> list[str]:
        with self.engine.connect() as conn:
            return cursors.running_behind(conn, list(self.projections), target)
