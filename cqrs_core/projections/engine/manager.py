"""ProjectionManager: the one object the app, the worker, the CLI and the pages use to run and
operate the projections. It is the operator's facade: status and lag, pause/resume, failure
policy, rebuilds, parked events, view refreshes and read-your-writes answers, each delegating to
the module that owns it (control.py, parking.py, rebuild.py, lag.py, views.py). Running the
projections (locks, thread pool, batches, heartbeat) is the `ProjectionRunner` it composes
(runner.py); `run_once`, `catch_up`, `close` and the rest of the running methods hand over to it."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from cqrs_core.eventlog import cursors, partitions
from cqrs_core.eventlog.reader import SharedLog
from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import ValidationError
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine import (
    continuous_verify,
    control,
    lag,
    parking,
    verification_progress,
    views,
)
from cqrs_core.projections.engine.batches import RetryPolicy
from cqrs_core.projections.engine.continuous_verify import PassReport, SampleSize, VerificationStatus
from cqrs_core.projections.engine.lag import LagSample
from cqrs_core.projections.engine.locks import REBUILD_NAMESPACE, RUNNER_NAMESPACE, held_in_database
from cqrs_core.projections.engine.parking import ParkedEvent
from cqrs_core.projections.engine.partitioning import Unit
from cqrs_core.projections.engine.rebuild import RebuildResult
from cqrs_core.projections.engine.rebuild import rebuild as run_rebuild
from cqrs_core.projections.engine.runner import ProjectionRunner, RunnerRestart
from cqrs_core.projections.engine.verification_progress import VerificationProgress
from cqrs_core.projections.engine.views import ViewRefresh
from cqrs_core.projections.registry import PROJECTIONS, get_projection

# Events per rebuild batch (each batch is one shadow transaction with its rebuild cursor):
# large enough that the per-batch cost is small, small enough for frequent progress reports.
DEFAULT_REBUILD_BATCH = 1000
# A runner whose heartbeat is older than this many poll intervals is reported stopped (it writes
# one after every round, and a round starts at least every poll interval) ...
STALE_AFTER_POLLS = 5
# ... but never sooner than this: a short poll interval must not make a busy runner look dead.
STALE_AFTER_MIN_SECONDS = 5.0
# A projection's events/s is shown only from a lag sample younger than this many sampling
# intervals (plus RATE_FRESH_SLACK_SECONDS for a late sample); an older one means nobody samples.
RATE_FRESH_SAMPLES = 3
RATE_FRESH_SLACK_SECONDS = 2.0


@dataclass(frozen=True)
class PartitionStatus:
    """One partition of a split projection: where it is and which worker holds it."""

    partition: int
    partitions: int
    position: int  # its cursor's position
    lag_events: int  # head minus its position (events of every partition: it walks the whole log)
    events_applied: int
    owner: str | None  # host:pid of the worker holding it (None: nobody holds it right now)
    heartbeat_at: datetime | None = None


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
    # A projection split into partitions: each partition and its holder (empty when not split).
    partitions: tuple[PartitionStatus, ...] = ()


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
        self.projections: dict[str, Projection] = dict(PROJECTIONS)
        self.rebuild_batch_size = rebuild_batch_size
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.retry_policy = RetryPolicy(settings.projection_retry_attempts, settings.projection_retry_backoff)
        self.stale_after = max(STALE_AFTER_MIN_SECONDS, STALE_AFTER_POLLS * settings.projection_poll_seconds)
        self.runner = ProjectionRunner(
            engine, settings, self.projections, owner=self.owner, retry_policy=self.retry_policy
        )

    # ------------------------------------------------------------ running (the runner's)

    @property
    def batch_sizes(self) -> dict[str, list[int]]:
        """The batch sizes of each projection's latest drain in this process."""
        return self.runner.batch_sizes

    @property
    def shared_log(self) -> SharedLog:
        """The window of decoded events the projections of this process read through."""
        return self.runner.shared_log

    def run_once(self, name: str | None = None) -> int:
        """Apply every available event for the projections this process can lock (all, or
        `name`) until each is caught up; returns the number of events applied."""
        return self.runner.run_once(name)

    def catch_up(self, timeout: float | None = None) -> int:
        """Run until every projection that is not paused or faulted has applied every event
        committed now (waiting for other processes that hold some of them). Returns the events
        this process applied; raises TimeoutError_ after `timeout` seconds."""
        return self.runner.catch_up(timeout)

    def request_stop(self) -> None:
        """Make running loops return after their current batch."""
        self.runner.request_stop()

    def close(self, timeout: float | None = None) -> None:
        """Release this process's projections (others take over) and mark them stopped.
        Waits up to `timeout` seconds (None: as long as it takes) for a running batch."""
        self.runner.close(timeout)

    def reopen(self) -> None:
        """Allow running again after `request_stop`/`close`."""
        self.runner.reopen()

    def held(self) -> set[str]:
        """The projections this process runs right now."""
        return self.runner.held()

    def held_back(self) -> bool:
        """Whether one of them is still behind the last committed event after a round
        (`ProjectionRunner.held_back`)."""
        return self.runner.held_back()

    def restart_runner(self, name: str) -> RunnerRestart:
        """Abandon `name`'s stuck drain in this process and let the next round start it afresh
        (`ProjectionRunner.restart`); says what was done."""
        return self.runner.restart(name)

    # ------------------------------------------------------------ status

    def status(self) -> list[ProjectionStatus]:
        """State, position, head, lag (events and seconds), rate and last error of each projection."""
        self.runner.ensure_rows()
        names = list(self.projections)
        fresh = RATE_FRESH_SAMPLES * self.settings.lag_sample_seconds + RATE_FRESH_SLACK_SECONDS
        with self.engine.connect() as conn:
            measured = {m.name: m for m in lag.measure(conn, names)}
            rates = lag.latest_rates(conn, names, fresh_seconds=fresh)
            rebuilding = held_in_database(conn, REBUILD_NAMESPACE, names)
            rows = control.status_rows(conn, names)
            split = partitions.partition_rows(conn, names)
            keys = [Unit(p.name, p.partition, p.partitions).key for parts in split.values() for p in parts]
            held = held_in_database(conn, RUNNER_NAMESPACE, keys)
        statuses = []
        for n in names:
            status = self._status_of(n, rows[n], measured[n], rates.get(n, 0.0), n in rebuilding)
            if n in split:
                status = self._with_partitions(status, split[n], held, rows[n].now)
            statuses.append(status)
        return statuses

    def _with_partitions(
        self, status: ProjectionStatus, parts: list[partitions.PartitionRow], held: set[str], now: datetime
    ) -> ProjectionStatus:
        """`status` with its partitions, their holders and (as its runner) how many workers share it."""

        def holder(p: partitions.PartitionRow) -> str | None:
            # The lock says whether someone holds it; the heartbeat row says who.
            fresh = p.heartbeat_at is not None and (now - p.heartbeat_at).total_seconds() < self.stale_after
            return p.owner if fresh and Unit(p.name, p.partition, p.partitions).key in held else None

        listed = tuple(
            PartitionStatus(
                partition=p.partition,
                partitions=p.partitions,
                position=p.cursor.position,
                lag_events=max(0, status.head - p.cursor.position),
                events_applied=p.events_applied,
                owner=holder(p),
                heartbeat_at=p.heartbeat_at,
            )
            for p in parts
        )
        owners = sorted({p.owner for p in listed if p.owner})
        held_by = len([p for p in listed if p.owner])
        summary = f"{len(owners)} worker(s), {held_by} of {len(listed)} partitions held" if owners else None
        return replace(status, partitions=listed, owner=summary)

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
        self.runner.ensure_rows()
        result = run_rebuild(
            self.engine,
            get_projection(name),
            retry=self.retry_policy,
            batch_size=self.rebuild_batch_size,
            owner=self.owner,
            progress=progress,
            stop=stop,
        )
        # A split projection's partitions now stand at one place: this process's runner may
        # re-split it as its settings ask at its next round (another process's, within seconds).
        self.runner.forget_layouts()
        return result

    def request_rebuild(self, name: str) -> None:
        """Ask the running runtime (in any process) to rebuild `name`."""
        self._set_control(name, "rebuild_requested_at = clock_timestamp(), rebuild_error = NULL")

    def requested_rebuilds(self) -> list[str]:
        """The projections whose rebuild was requested and has not finished."""
        self.runner.ensure_rows()
        return control.requested_rebuilds(self.engine)

    def parked(self, projection: str | None = None, status: str | None = "parked") -> list[ParkedEvent]:
        """Parked events (status "parked", "retried", "discarded", or None for all)."""
        return parking.list_parked(self.engine, projection, status)

    def retry_parked(self, ids: list[int] | None = None) -> int:
        """Apply parked events again (all, or `ids`); returns how many succeeded."""
        return parking.retry(self.engine, parking.checked_ids(ids) if ids is not None else None)

    def discard_parked(self, ids: list[int]) -> int:
        """Give up on parked events; returns how many were discarded."""
        return parking.discard(self.engine, parking.checked_ids(ids))

    def has_applied(self, conn: Connection, position: int, names: Sequence[str]) -> bool:
        """Read-your-writes: True iff every projection in `names` has applied (or passed) the
        event at `position`, comparing LogCursors (txid, position), not bare positions."""
        if position <= 0:
            return True
        return cursors.has_applied(conn, position, sorted({get_projection(n).name for n in names}))

    # ------------------------------------------------------------ lag and views

    def sample_lag(self, min_interval: float | None = None) -> list[LagSample]:
        """Write one lag sample per projection (position, head, lag, events/s)."""
        self.runner.ensure_rows()
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

    # ------------------------------------------------------------ continuous verification

    def verify_sample(
        self,
        min_interval: float | None = None,
        *,
        size: SampleSize | None = None,
        after_replay: Callable[[], object] | None = None,
    ) -> PassReport | None:
        """One continuous-verification pass over the next sample of streams (the settings' sample
        size unless `size`); None if another process is running one or (with `min_interval`)
        finished one less than that many seconds ago."""
        self.runner.ensure_rows()
        return continuous_verify.run_pass(
            self.engine,
            size or SampleSize.from_settings(self.settings),
            min_interval=min_interval,
            after_replay=after_replay,
        )

    def verification_progress(self) -> VerificationProgress:
        """The round's cursor and counts and the last pass (of any process)."""
        return verification_progress.verification_progress(self.engine)

    def verification_status(self, limit: int = 100) -> VerificationStatus:
        """The round's coverage, the last pass and the newest open drift findings."""
        return continuous_verify.verification_status(self.engine, limit)

    # ------------------------------------------------------------ internals

    def _set_control(self, name: str, assignments: str, **params: object) -> None:
        name = get_projection(name).name
        self.runner.ensure_rows()
        control.update(self.engine, name, assignments, **params)
