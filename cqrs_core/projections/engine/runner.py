"""ProjectionRunner: applies the log to the projections this process runs.

It owns what running takes: the runner advisory locks (which projections this process runs; the
others are run by whichever process holds theirs), the thread pool the projections drain in side
by side, the shared window of decoded events, the batch schedule (batches grow while they come
back full), and the heartbeat other processes read the owner and liveness from. The batches
themselves are `batches.step`; the operator's side (status, pause, rebuild, parked events) is
`ProjectionManager`, which composes one runner.

A drain can wedge: a batch waiting forever (on a lock, a hung connection, a projection's own code)
keeps its advisory lock and, from the pool, the heartbeat says it runs, yet nothing moves. Python
cannot kill the thread, so `restart` abandons the drain instead: its target refuses every further
batch, its connection's backend is terminated (the open batch rolls back, releasing its checkpoint
row), the round stops waiting for it, and the next round drains the projection afresh on a new pool.
The abandoned thread, whenever it wakes, finds its connection gone and stops without writing."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from sqlalchemy import Engine

from cqrs_core.eventlog import cursors, partitions
from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import TimeoutError_
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine import control
from cqrs_core.projections.engine.batches import (
    LiveTarget,
    RetryPolicy,
    shared_window,
    step,
    window_capacity,
)
from cqrs_core.projections.engine.gc_tuning import catch_up_gc
from cqrs_core.projections.engine.locks import AdvisoryLocks, dedicated_connection
from cqrs_core.projections.engine.partitioning import (
    PartitionTarget,
    Unit,
    is_partition_key,
    projection_of,
    units_of,
    wanted_partitions,
)
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
# How often a runner re-reads the projections' layouts (how many partitions each has): another
# process may have split one, and a drain that meets a changed layout asks at once.
LAYOUT_RECHECK_SECONDS = 1.0
# A layout the settings ask for that could not be made (partitions at different places) is tried
# again this often.
LAYOUT_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class RunnerRestart:
    """What `restart` did to a projection's runner: `restarted` or not, and `detail`, the rest of
    the sentence ("abandoned its drain, stuck for 63 s, and rolled back its open batch …")."""

    projection: str
    restarted: bool
    detail: str

    def describe(self, prefix: str = "") -> str:
        """One sentence for a log or an alert's history; `prefix` e.g. "auto-"."""
        if self.restarted:
            return f"{prefix}restarted the runner of {self.projection}: {self.detail}"
        return f"did not {prefix}restart the runner of {self.projection}: {self.detail}"


@dataclass
class _Drain:
    """One projection's drain under way: what `restart` needs to abandon it."""

    started: float = field(default_factory=time.monotonic)
    abandoned: threading.Event = field(default_factory=threading.Event)
    target: LiveTarget | None = None  # set once the drain's thread starts


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
        # The drains under way by projection, and the pool they run on (replaced by `restart`).
        self._drains: dict[str, _Drain] = {}
        self._drains_lock = threading.Lock()
        # The batch sizes of each projection's latest drain (adaptive, see `_drain`).
        self.batch_sizes: dict[str, list[int]] = {}
        # The projections of this process read the log through one window (see SharedLog).
        self.shared_log = shared_window(settings.projection_max_batch)
        # {projection: partitions}, as the checkpoint rows said at `_layouts_at` (partitioning.py).
        self._layouts: dict[str, int] = {}
        self._layouts_at = float("-inf")
        self._layout_tried: dict[str, float] = {}
        self._layout_warned: set[str] = set()

    def ensure_rows(self) -> None:
        """Give every projection its checkpoint and control rows (once per runner)."""
        if self._rows_ready:
            return
        control.ensure_rows(self.engine, self.projections.values())
        self._rows_ready = True

    def _apply_wanted_layouts(self, names: Sequence[str]) -> None:
        """Split (or join) the projections of `names` as this runner's settings ask, where that
        can be done exactly (see `partitions.set_layout`); otherwise keep the layout in force and
        say so (once per LAYOUT_RETRY_SECONDS). Only runners do this, at most every
        LAYOUT_RECHECK_SECONDS: a status or rebuild command never changes a layout."""
        now = time.monotonic()
        layouts = self.layouts()
        changed = False
        for name in names:
            wanted = wanted_partitions(self.settings, self.projections[name])
            if (
                layouts.get(name, 1) == wanted
                or now - self._layout_tried.get(name, float("-inf")) < LAYOUT_RETRY_SECONDS
            ):
                continue
            self._layout_tried[name] = now
            with self.engine.begin() as conn:
                done = partitions.set_layout(conn, name, wanted)
            changed = changed or done
            if done:
                log.info("projection %s now runs in %d partition(s)", name, wanted)
            elif name not in self._layout_warned:
                self._layout_warned.add(name)
                log.warning(
                    "projection %s: its partitions stand at different places in the log, so it keeps its "
                    "layout until they meet or it is rebuilt (asked for %d partition(s))",
                    name,
                    wanted,
                )
        if changed:
            self._layouts_at = float("-inf")

    def forget_layouts(self) -> None:
        """Re-read the layouts and try the wanted ones again at the next round (after a rebuild)."""
        self._layouts_at = float("-inf")
        self._layout_tried.clear()

    def layouts(self, force: bool = False) -> dict[str, int]:
        """{projection: number of partitions} as the database says (re-read at most every
        LAYOUT_RECHECK_SECONDS unless `force`)."""
        now = time.monotonic()
        if force or now - self._layouts_at >= LAYOUT_RECHECK_SECONDS:
            with self.engine.connect() as conn:
                self._layouts = partitions.layouts(conn, list(self.projections))
            self._layouts_at = now
        return self._layouts

    def units(self, names: Sequence[str] | None = None) -> list[Unit]:
        """The units (whole projections, or partitions) of `names` (all) under the current layouts."""
        layouts = self.layouts()
        chosen = list(self.projections) if names is None else list(names)
        return [u for n in chosen for u in units_of(n, layouts.get(n, 1))]

    # ------------------------------------------------------------ running

    def run_once(self, name: str | None = None) -> int:
        """Apply every available event for the projections this process can lock (all, or
        `name`), batch by batch, until each is caught up; returns the number of events applied.
        The projections are independent (own tables, own checkpoint), so they run side by side
        in a small thread pool: one waits on the database while another folds its batch. A drain
        abandoned by `restart` is not waited for (nor counted)."""
        names = None if name is None else [get_projection(name).name]
        with self._run_mutex, translate_db_errors():
            self.ensure_rows()
            self._apply_wanted_layouts(names or list(self.projections))
            # A projection's partitions are shared out among the live runners (per projection).
            units = {u.key: u for u in self.units(names)}
            gone = [
                k
                for k in self._locks.held()
                if is_partition_key(k) and k not in units and (names is None or projection_of(k) in names)
            ]
            if gone:  # partitions of a layout that was replaced
                self._locks.release(gone)
            held = self._locks.acquire(list(units), shared=_partition_group)
            if not held:
                return 0
            held_here = len(self._locks.held())
            self.shared_log.capacity = window_capacity(
                self.settings.projection_max_batch, -(-held_here // max(1, len(self.projections)))
            )
            drains = {n: _Drain() for n in held}
            with self._drains_lock:
                self._drains.update(drains)
                if self._pool is None:
                    # As many threads as projections: the units (projections or partitions) beyond
                    # that wait their turn. Each drain holds a pooled connection while it runs; one
                    # thread per partition (16 with K = 4) emptied the worker's pool (4 + 4) under
                    # load, and its heartbeats and jobs waited 30 s for a connection and failed.
                    self._pool = ThreadPoolExecutor(len(self.projections), thread_name_prefix="projection")
                futures = {n: self._pool.submit(self._drain, units[n], drains[n]) for n in held}
            try:
                while pending := self._waited_for(futures, drains):
                    wait(pending, timeout=HEARTBEAT_SECONDS)
                    self._heartbeat(held)
                # re-raises the first failure
                applied = sum(f.result() for n, f in futures.items() if not drains[n].abandoned.is_set())
            finally:
                with self._drains_lock:
                    for n, drain in drains.items():
                        if self._drains.get(n) is drain:
                            del self._drains[n]
            self._heartbeat(held, force=self._states_changed(held))
            return applied

    @staticmethod
    def _waited_for(futures: Mapping[str, Future[int]], drains: Mapping[str, _Drain]) -> list[Future[int]]:
        return [f for n, f in futures.items() if not f.done() and not drains[n].abandoned.is_set()]

    def _drain(self, unit: Unit | str, drain: _Drain | None = None) -> int:
        """Apply batches to one projection until it is caught up, paused, faulted or stopped.

        Batches start at `checkpoint_interval` events and double, up to `projection_max_batch`,
        while they come back full: a projection that is far behind pays the per-batch cost
        (checkpoint lock, reads, writes, commit) every few thousand events instead of every 50.
        The next drain (caught up, woken by a NOTIFY) starts small again. Each batch still
        commits with its checkpoint, and `step` still isolates a poison event in any batch."""
        if isinstance(unit, str):
            unit = Unit(unit)
        name = unit.key
        projection = self.projections[unit.name]
        drain = drain or _Drain()
        target: LiveTarget
        if unit.partitioned:
            target = PartitionTarget(
                self.engine, projection, unit, self.shared_log, abandoned=drain.abandoned
            )
        else:
            target = LiveTarget(self.engine, projection, self.shared_log, abandoned=drain.abandoned)
        drain.target = target

        def stopped() -> bool:
            return self._stop.is_set() or drain.abandoned.is_set()

        applied = 0
        size = self.settings.checkpoint_interval
        ceiling = max(size, self.settings.projection_max_batch)
        sizes: list[int] = []
        gc_relaxed = False
        try:
            while not self._stop.is_set() and not drain.abandoned.is_set():
                # Before the batch's transaction: keep within a window of the slowest drain here.
                target.pace(size, stopped)
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
            if target.layout_changed:
                self._layouts_at = float("-inf")  # another process split or joined it: re-read
            target.close()
            if not drain.abandoned.is_set():
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

    def restart(self, name: str) -> RunnerRestart:
        """Restart the drain of `name` in this process (see the module's docstring) and say what
        was done. Nothing is done when this process does not hold `name`; when no drain of it is
        under way, the next round simply starts one."""
        name = get_projection(name).name
        keys = sorted(k for k in self._locks.held() if projection_of(k) == name)
        if not keys:
            return RunnerRestart(name, False, f"this process ({self.owner}) does not run it")
        results = [self._restart_unit(name, key) for key in keys]
        if len(results) == 1:
            return results[0]
        return RunnerRestart(
            name,
            any(r.restarted for r in results),
            "; ".join(
                f"partition {projection_key_tail(k)}: {r.detail}" for k, r in zip(keys, results, strict=True)
            ),
        )

    def _restart_unit(self, name: str, key: str) -> RunnerRestart:
        with self._drains_lock:
            drain = self._drains.get(key)
            if drain is None or drain.abandoned.is_set():
                return RunnerRestart(name, True, "no batch was under way; the next round starts one")
            drain.abandoned.set()
            del self._drains[key]
            if drain.target is not None:
                self.shared_log.leave(drain.target)  # it holds the other drains back no more
            # The abandoned thread keeps its pool slot until it wakes: later rounds get a new pool.
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        stuck = time.monotonic() - drain.started
        backend = drain.target.backend_pid if drain.target is not None else None
        if backend is None:
            return RunnerRestart(
                name, True, f"abandoned its drain, stuck for {stuck:.0f} s outside the database"
            )
        try:
            self._terminate_backend(backend)
        except Exception as exc:
            log.warning(
                "could not end the stuck batch of %s (backend %d): %s", name, backend, type(exc).__name__
            )
            return RunnerRestart(
                name,
                True,
                f"abandoned its drain, stuck for {stuck:.0f} s, but could not end its database session "
                f"(backend {backend}); its open batch holds the checkpoint until it ends",
            )
        log.warning(
            "restarted the runner of %s: its drain was stuck for %.0f s (backend %d ended)",
            name,
            stuck,
            backend,
        )
        return RunnerRestart(
            name,
            True,
            f"abandoned its drain, stuck for {stuck:.0f} s, and rolled back its open batch "
            f"(database backend {backend} ended)",
        )

    def _terminate_backend(self, pid: int) -> None:
        # On a connection of the URL's own user, which opened the batch's session too: ending a
        # session of one's own user needs no further right (SET ROLE would lose it).
        conn = dedicated_connection(self.engine, "projection restart")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def request_stop(self) -> None:
        """Make running loops return after their current batch."""
        self._stop.set()
        self.shared_log.wake()  # a drain waiting for a slower one stops waiting

    def close(self, timeout: float | None = None) -> None:
        """Release this process's projections (others take over) and mark them stopped.
        Waits up to `timeout` seconds (None: as long as it takes) for a running batch."""
        self._stop.set()
        self.shared_log.wake()
        got = self._run_mutex.acquire(timeout=-1 if timeout is None else timeout)
        try:
            held = sorted(self._locks.held())
            if held:
                try:
                    control.release(self.engine, sorted({projection_of(k) for k in held}), self.owner)
                    with self.engine.begin() as conn:
                        partitions.release_partitions(conn, self.owner, _partition_pairs(held))
                except Exception:
                    log.warning("could not mark projections stopped", exc_info=True)
            self._locks.release_all()
            with self._drains_lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=got)
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
        # A split projection is catching up while any of its partitions held here is.
        by_projection: dict[str, str] = {}
        for key, state in states.items():
            name = projection_of(key)
            if by_projection.get(name) != "catching_up":
                by_projection[name] = state
        control.heartbeat(self.engine, self.owner, by_projection)
        pairs = _partition_pairs(held)
        if pairs:
            with self.engine.begin() as conn:
                partitions.partition_heartbeat(conn, self.owner, pairs)

    def _committed_tip(self) -> LogCursor:
        with self.engine.connect() as conn:
            return cursors.committed_tip(conn)

    def _behind(self, target: LogCursor) -> list[str]:
        with self.engine.connect() as conn:
            return cursors.running_behind(conn, list(self.projections), target)

    def held_back(self) -> bool:
        """Whether, after a round, a projection this process runs (not paused, not faulted) is
        still before the last committed event: the gap-free horizon held it back, because an
        older transaction (another projection's batch, a command) was still open when it read.
        No NOTIFY will come for that event again, so the runtime tries again shortly. (A
        partitioned projection's checkpoint is its lowest partition's cursor.)"""
        held = sorted({projection_of(key) for key in self._locks.held()})
        if not held:
            return False
        with self.engine.connect() as conn:
            return bool(cursors.running_behind(conn, held, cursors.committed_tip(conn)))


def _partition_pairs(keys: Sequence[str]) -> list[tuple[str, int]]:
    """(projection, partition) of each partition unit among the lock keys `keys`."""
    pairs = []
    for key in keys:
        if is_partition_key(key):
            pairs.append((projection_of(key), int(projection_key_tail(key).split("/")[0])))
    return pairs


def projection_key_tail(key: str) -> str:
    """What follows the projection's name in a unit's key ("2/4" for partition 2 of 4)."""
    return key.partition("#")[2]


def _partition_group(key: str) -> str | None:
    """The projection a partition unit's key belongs to (the locks share each one's out); None
    for a whole projection."""
    return projection_of(key) if is_partition_key(key) else None
