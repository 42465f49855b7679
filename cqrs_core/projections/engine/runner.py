"""ProjectionRunner: applies the log to the projections this process runs.

It owns what running takes: the runner advisory locks (which projections this process runs; the
others are run by whichever process holds theirs), the thread pool the projections drain in side
by side, the shared window of decoded events, the batch schedule (batches grow while they come
back full), and the heartbeat other processes read the owner and liveness from. The batches
themselves are `batches.step`; the operator's side (status, pause, rebuild, parked events) is
`ProjectionManager`, which composes one runner."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from sqlalchemy import Engine

from cqrs_core.eventlog import cursors
from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import TimeoutError_
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine import control
from cqrs_core.projections.engine.batches import LiveTarget, RetryPolicy, shared_window, step
from cqrs_core.projections.engine.gc_tuning import catch_up_gc
from cqrs_core.projections.engine.locks import AdvisoryLocks
from cqrs_core.projections.registry import get_projection

log = logging.getLogger(__name__)

# The heartbeat is written at most this often (sooner when a projection's state changes): a
# runner woken by every NOTIFY would otherwise write it each time. A multi-projection round
# also wakes this often to write it while its drains run, so a long catch-up still looks alive.
HEARTBEAT_SECONDS = 1.0
# From this batch size on, a drain counts as catching up and the collector is relaxed
# (see gc_tuning); smaller drains are a caught-up projection's few new events.
CATCH_UP_GC_BATCH = 1000
# The batch sizes of one drain kept for `batch_sizes` (tests and `bench` read them); bounded so
# a very long catch-up does not grow the list without end.
BATCH_SIZES_KEPT = 1000
# How long `catch_up` waits between rounds while the events it waits for are another process's
# to apply (or not committed below the gap-free horizon yet): short, because callers block on it.
CATCH_UP_RETRY_SECONDS = 0.05


class ProjectionRunner:
    """Runs the projections of one process against one database. Thread-safe; several runners
    (in several processes) may share a database: each projection is run by the one process
    holding its advisory lock."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        projections: Mapping[str, Projection],
        *,
        owner: str,
        retry_policy: RetryPolicy,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.projections = projections
        self.owner = owner
        self.retry_policy = retry_policy
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
        self.shared_log = shared_window(settings.projection_max_batch)

    def ensure_rows(self) -> None:
        """Give every projection its checkpoint and control rows (once per runner)."""
        if self._rows_ready:
            return
        control.ensure_rows(self.engine, self.projections.values())
        self._rows_ready = True

    # ------------------------------------------------------------ running

    def run_once(self, name: str | None = None) -> int:
        """Apply every available event for the projections this process can lock (all, or
        `name`), batch by batch, until each is caught up; returns the number of events applied.
        The projections are independent (own tables, own checkpoint), so they run side by side
        in a small thread pool: one waits on the database while another folds its batch."""
        names = list(self.projections) if name is None else [get_projection(name).name]
        with self._run_mutex, translate_db_errors():
            self.ensure_rows()
            held = self._locks.acquire(names)
            if not held:
                return 0
            if len(held) == 1:
                applied = self._drain(held[0])
            else:
                if self._pool is None:
                    # One thread per projection: each drains at most one projection at a time.
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
                result = step(projection, target, size, self.retry_policy)
                if len(sizes) < BATCH_SIZES_KEPT:
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
        self.ensure_rows()
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
            time.sleep(CATCH_UP_RETRY_SECONDS)

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
                    control.release(self.engine, held, self.owner)
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

    # ------------------------------------------------------------ internals

    def _states_changed(self, held: Sequence[str]) -> bool:
        return {n: self._states.get(n, "running") for n in held} != self._written_states

    def _heartbeat(self, held: Sequence[str], force: bool = False) -> None:
        """Record owner, liveness and running/catching_up state, at most every HEARTBEAT_SECONDS
        unless the states changed (a runner woken by every NOTIFY would otherwise write each time)."""
        now = time.monotonic()
        if not held or (not force and now - self._last_heartbeat < HEARTBEAT_SECONDS):
            return
        self._last_heartbeat = now
        states = {n: self._states.get(n, "running") for n in held}
        self._written_states = dict(states)
        control.heartbeat(self.engine, self.owner, states)

    def _committed_tip(self) -> LogCursor:
        with self.engine.connect() as conn:
            return cursors.committed_tip(conn)

    def _behind(self, target: LogCursor) -> list[str]:
        with self.engine.connect() as conn:
            return cursors.running_behind(conn, list(self.projections), target)
