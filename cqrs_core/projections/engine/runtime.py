"""ProjectionRuntime: the background machinery shared by the Streamlit app and `cqrs-console worker`.

* The runner is a dedicated thread, not a scheduler job: it blocks in `select()` on a connection
  that LISTENs on `cqrs_events`, so it wakes the moment an append commits, and falls back to
  polling every `projection_poll_seconds` (a NOTIFY can be lost with a broken connection, and a
  standby must keep trying the advisory locks). An interval job could only poll.
* The periodic chores are APScheduler 3 BackgroundScheduler jobs (max_instances=1, coalesce):
  lag sampling, view refresh, lag pruning, picking up requested rebuilds, and continuous
  verification (a pass over the next sample of streams, `continuous_verify.py`). A rebuild runs in a
  thread of its own so a long one never shows up as an overrunning job.
* The lag sampler is never skipped for another job or a slow sample: it has an executor (thread)
  of its own, a sample due while the previous one still runs waits for it instead of being
  dropped, and a late sample runs however late (no misfire limit). A skipped run is counted
  (`JobRun.skipped`).
* Several processes may each run a runtime: projections are split by advisory locks, the sampler,
  the view refresh and the verification pass skip work another process has just done.
* Jobs of other parts (the alert evaluator, wired by the service) are given as `PeriodicJob`s
  and run on the same scheduler; every job's runs, skips and misses go to a `JobHistory`, which
  the System page shows and the alert rules read.
* Background threads only talk to cqrs_core and the database (never to Streamlit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import ConcurrencyError
from cqrs_core.projections.engine.failures import describe_error
from cqrs_core.projections.engine.locks import dedicated_connection
from cqrs_core.projections.engine.manager import ProjectionManager
from cqrs_core.projections.engine.runner import RunnerRestart

log = logging.getLogger(__name__)

# The channel the events table's trigger NOTIFYs on every append (migrations 0001, 0005).
CHANNEL = "cqrs_events"
# How often the scheduler looks for requested rebuilds: an operator's request starts within this.
REBUILD_POLL_SECONDS = 2.0
# How often old lag samples are pruned: the retention is minutes, so once a minute is plenty.
PRUNE_SECONDS = 60.0
# A job that could not start on time (a busy process) still runs if at most this late, instead
# of being counted as missed.
JOB_MISFIRE_GRACE_SECONDS = 30
# The lag sampler's executor: one thread of its own, so no other job (a long view refresh) and
# no full pool can hold a sample up.
SAMPLER_EXECUTOR = "lag-sampler"
# A sample due while the previous one still runs is queued behind it in that thread (a second
# instance) rather than skipped; only one due while both are pending is dropped (and counted).
SAMPLER_MAX_INSTANCES = 2
# However late the scheduler gets to a sample (a starved process), it still runs: None is
# APScheduler's "no limit". Coalescing makes several overdue samples one.
SAMPLER_MISFIRE_GRACE_SECONDS = None
# After a failed round the runner waits projection_poll_seconds doubled per failure in a row,
# at most this many doublings ...
RUNNER_BACKOFF_DOUBLINGS = 5
# ... and at most this long, so a database that comes back is used again within half a minute.
RUNNER_BACKOFF_MAX_SECONDS = 30.0
# The default of `stop`: how long the runner, a rebuild and a running job get to finish.
STOP_TIMEOUT_SECONDS = 10.0
# Releasing the projections after the threads stopped gets at least this long, even when the
# threads used up the whole stop timeout.
RELEASE_MIN_SECONDS = 0.5
# How often the headless worker's main thread looks whether SIGTERM/SIGINT asked it to stop.
SIGNAL_CHECK_SECONDS = 0.5
# A lag sample is skipped if one (of any process) is younger than this fraction of the interval:
# several processes sample, and one sample per interval is enough.
LAG_SAMPLE_SKIP_FRACTION = 0.5
# A view refresh is skipped if one (of any process) is younger than this fraction of the interval.
VIEW_REFRESH_SKIP_FRACTION = 0.8
# A continuous-verification pass is skipped if one (of any process) finished less than this
# fraction of the interval ago: several processes run the job, and one pass per interval is enough.
VERIFY_SKIP_FRACTION = 0.8
# Bytes read from the wake-up pipe at once: more than `stop` ever writes, so one read empties it.
WAKE_READ_BYTES = 1024
# First pause before another round when a projection was held back behind an older open
# transaction (it doubles while that lasts, up to the poll interval).
HELD_BACK_RETRY_SECONDS = 0.02
# How long `restart_runner` waits for the runtime's lock to wake the runner (`stop` holds it).
RESTART_WAKE_WAIT_SECONDS = 1.0
# Missed runs remembered per job (their times), for "missed runs in the last N seconds".
MISSED_RUNS_KEPT = 1000


@dataclass(frozen=True)
class JobRun:
    """One periodic job as the System page shows it."""

    job_id: str
    every_seconds: float | None
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_outcome: str | None  # "ok", "error: …", "missed" or "skipped"
    runs: int
    skipped: int = 0  # due runs dropped because earlier ones still ran (max_instances)


@dataclass(frozen=True)
class PeriodicJob:
    """A job another part of the system runs on the runtime's scheduler every `every_seconds`
    (one run at a time; the first one interval after the start). `run` must not raise: it logs its own failures.
    `close`, if any, runs when the runtime stops, after the job's last run."""

    job_id: str
    every_seconds: float
    run: Callable[[], None]
    close: Callable[[], None] | None = None


class JobHistory:
    """What became of each scheduled job's runs in this process: its last run and outcome, its
    run count, the runs skipped because one still ran, and when runs were missed (the scheduler
    got to them later than their grace time). Thread-safe; the scheduler's listener writes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[datetime, str, int]] = {}
        self._skipped: dict[str, int] = {}
        self._missed: dict[str, deque[datetime]] = {}

    def record(self, event: JobEvent) -> None:
        now = datetime.now(UTC)
        with self._lock:
            runs = self._last.get(event.job_id, (now, "", 0))[2]
            if event.code == EVENT_JOB_MAX_INSTANCES:
                self._skipped[event.job_id] = self._skipped.get(event.job_id, 0) + 1
                outcome = "skipped"
            elif event.code == EVENT_JOB_ERROR:
                outcome = f"error: {type(getattr(event, 'exception', None)).__name__}"
                runs += 1
            elif event.code == EVENT_JOB_MISSED:
                outcome = "missed"
                runs += 1
                self._missed.setdefault(event.job_id, deque(maxlen=MISSED_RUNS_KEPT)).append(now)
            else:
                outcome = "ok"
                runs += 1
            self._last[event.job_id] = (now, outcome, runs)

    def last(self, job_id: str) -> tuple[datetime, str, int] | None:
        """(when, outcome, runs) of the job's latest run, or None before its first."""
        with self._lock:
            return self._last.get(job_id)

    def skipped(self, job_id: str) -> int:
        with self._lock:
            return self._skipped.get(job_id, 0)

    def missed_runs(self) -> dict[str, tuple[datetime, ...]]:
        """Per job with any: when its runs were missed (the latest MISSED_RUNS_KEPT), oldest first."""
        with self._lock:
            return {job: tuple(times) for job, times in self._missed.items() if times}


class ProjectionRuntime:
    """Runs the projections and the periodic jobs in background threads of this process.
    `jobs` are other parts' periodic jobs (the alert evaluator), `history` where every job's runs
    are recorded (a new one when not given)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        manager: ProjectionManager | None = None,
        *,
        jobs: Sequence[PeriodicJob] = (),
        history: JobHistory | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.manager = manager or ProjectionManager(engine, settings)
        self.extra_jobs = tuple(jobs)
        self.history = history or JobHistory()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._rebuild_stop = threading.Event()
        self._runner: threading.Thread | None = None
        self._rebuilder: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._wake: tuple[int, int] | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None and self._runner.is_alive()

    def start(self) -> None:
        """Start the runner thread and the scheduler (does nothing if already started)."""
        with self._mutex:
            if self._runner is not None:
                return
            self.manager.reopen()
            self._stop.clear()
            self._rebuild_stop.clear()
            self._wake = os.pipe()
            self._runner = threading.Thread(target=self._run_loop, name="projection-runner", daemon=True)
            self._runner.start()
            if logging.getLogger("apscheduler").level == logging.NOTSET:
                logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run otherwise
            scheduler = BackgroundScheduler(
                timezone=UTC,
                executors={
                    "default": ThreadPoolExecutor(),
                    SAMPLER_EXECUTOR: ThreadPoolExecutor(max_workers=1),
                },
                job_defaults={
                    "max_instances": 1,
                    "coalesce": True,
                    "misfire_grace_time": JOB_MISFIRE_GRACE_SECONDS,
                },
            )
            now = datetime.now(UTC)
            s = self.settings
            scheduler.add_job(
                self._sample_lag,
                "interval",
                seconds=s.lag_sample_seconds,
                id="lag-sampler",
                next_run_time=now,
                executor=SAMPLER_EXECUTOR,
                max_instances=SAMPLER_MAX_INSTANCES,
                coalesce=True,
                misfire_grace_time=SAMPLER_MISFIRE_GRACE_SECONDS,
            )
            scheduler.add_job(
                self._refresh_views,
                "interval",
                seconds=s.view_refresh_seconds,
                id="view-refresh",
                next_run_time=now,
            )
            scheduler.add_job(
                self._prune_lag, "interval", seconds=PRUNE_SECONDS, id="lag-pruning", next_run_time=now
            )
            scheduler.add_job(
                self._start_rebuilds,
                "interval",
                seconds=REBUILD_POLL_SECONDS,
                id="rebuilds",
                next_run_time=now,
            )
            if s.verify_every_seconds > 0:
                scheduler.add_job(
                    self._verify_sample,
                    "interval",
                    seconds=s.verify_every_seconds,
                    id="verification",
                    next_run_time=now,
                )
            for job in self.extra_jobs:
                # First run one interval after the start: a starting process needs its time for
                # taking and draining the projections first.
                scheduler.add_job(job.run, "interval", seconds=job.every_seconds, id=job.job_id)
            scheduler.add_listener(
                self.history.record,
                EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
            )
            scheduler.start()
            self._scheduler = scheduler
            log.info("projection runtime started (%s)", self.manager.owner)

    def jobs(self) -> list[JobRun]:
        """The periodic jobs of this process with their interval, next run and last run."""
        scheduler = self._scheduler
        if scheduler is None:
            return []
        out = []
        for job in sorted(scheduler.get_jobs(), key=lambda j: j.id):
            interval = getattr(job.trigger, "interval", None)
            last = self.history.last(job.id)
            out.append(
                JobRun(
                    job.id,
                    interval.total_seconds() if interval else None,
                    job.next_run_time,
                    last[0] if last else None,
                    last[1] if last else None,
                    last[2] if last else 0,
                    self.history.skipped(job.id),
                )
            )
        return out

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
        """Stop after the current batch, release the projections to other processes, and
        return whether every thread finished within `timeout` seconds."""
        with self._mutex:
            if self._runner is None:
                return True
            deadline = time.monotonic() + timeout
            self._stop.set()
            self._rebuild_stop.set()
            self.manager.request_stop()
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake[1], b"x")
            threads = [t for t in (self._runner, self._rebuilder) if t is not None]
            if self._scheduler is not None:
                # Let a running job (a lag sample, a view refresh) finish, within the timeout.
                scheduler = self._scheduler
                closer = threading.Thread(target=scheduler.shutdown, name="scheduler-stop", daemon=True)
                closer.start()
                threads.append(closer)
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            stopped = not any(t.is_alive() for t in threads)
            for job in self.extra_jobs:
                if job.close is not None:
                    try:
                        job.close()
                    except Exception as exc:
                        log.warning("closing job %s failed: %s", job.job_id, describe_error(exc))
            self.manager.close(timeout=max(RELEASE_MIN_SECONDS, deadline - time.monotonic()))
            if self._wake is not None:
                for fd in self._wake:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._runner = self._rebuilder = self._scheduler = self._wake = None
            log.info("projection runtime stopped%s", "" if stopped else " (some threads still finishing)")
            return stopped

    def restart_runner(self, name: str) -> RunnerRestart:
        """Restart the runner of projection `name` in this process: abandon its stuck drain
        (`ProjectionRunner.restart`), start the runner thread again if it died, and wake it so
        that the projection is drained afresh now. Says what was done.

        Never waits on `stop`: the alert evaluator calls this holding its own lock, and `stop`
        (holding the runtime's) closes the evaluator, which waits for that lock."""
        if self._stop.is_set():
            return RunnerRestart(name, False, "the projection runtime of this process is stopping")
        done = self.manager.restart_runner(name)
        if not self._mutex.acquire(timeout=RESTART_WAKE_WAIT_SECONDS):  # `stop` holds it
            return done
        try:
            if not done.restarted or self._stop.is_set() or self._runner is None:
                return done
            if not self._runner.is_alive():
                log.warning("the projection runner thread had ended; starting it again")
                self._runner = threading.Thread(target=self._run_loop, name="projection-runner", daemon=True)
                self._runner.start()
                done = replace(
                    done, detail=f"{done.detail}; the runner thread had ended and was started again"
                )
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake[1], b"x")
        finally:
            self._mutex.release()
        return done

    def run_until_stopped(self) -> int:
        """Run headless until SIGTERM or SIGINT, then stop cleanly after the current batch."""
        stop = threading.Event()

        def on_signal(signum, _frame):
            log.info("received %s; stopping after the current batch", signal.Signals(signum).name)
            stop.set()

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        self.start()
        try:
            while not stop.wait(SIGNAL_CHECK_SECONDS):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def catch_up_once(self, timeout: float | None = None) -> int:
        """Apply everything visible now, sample lag and refresh the views once; returns the
        events applied (for `worker --once`)."""
        applied = self.manager.catch_up(timeout)
        self.manager.sample_lag()
        self.manager.refresh_views()
        if self._runner is None:
            self.manager.close()
            self.manager.reopen()
        return applied

    # ------------------------------------------------------------ the runner thread

    def _run_loop(self) -> None:
        listener = None
        failures = 0
        retry = 0.0  # > 0 while a projection is held back behind an older open transaction
        while not self._stop.is_set():
            try:
                if listener is None:
                    listener = dedicated_connection(self.engine, "projection listener")
                    with listener.cursor() as cur:
                        cur.execute(f"LISTEN {CHANNEL}")
                # LISTEN comes first: a NOTIFY arriving while the batches run is not lost.
                self.manager.run_once()
                failures = 0
                # An event committed while an older transaction was still open is above the
                # gap-free horizon of a drain that read then, and its NOTIFY has been used up:
                # look again soon (doubling up to the poll interval) rather than at the next poll.
                if self.manager.held_back():
                    retry = min(self.settings.projection_poll_seconds, retry * 2 or HELD_BACK_RETRY_SECONDS)
                    self._wait_for_events(listener, retry)
                else:
                    retry = 0.0
                    self._wait_for_events(listener)
            except Exception as exc:
                failures += 1
                backoff = 2 ** min(failures, RUNNER_BACKOFF_DOUBLINGS)
                delay = min(RUNNER_BACKOFF_MAX_SECONDS, self.settings.projection_poll_seconds * backoff)
                log.warning("projection runner: %s; retrying in %.1f s", describe_error(exc), delay)
                if listener is not None:
                    with contextlib.suppress(Exception):
                        listener.close()
                listener = None
                self._stop.wait(delay)
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    def _wait_for_events(self, listener, timeout: float | None = None) -> None:
        """Until a NOTIFY, a wake-up, or `timeout` (the poll interval) seconds."""
        wake_fd = self._wake[0] if self._wake else None
        watched = [listener] + ([wake_fd] if wake_fd is not None else [])
        wait = self.settings.projection_poll_seconds if timeout is None else timeout
        ready, _, _ = select.select(watched, [], [], wait)
        if listener in ready:
            listener.poll()
            listener.notifies.clear()
        if wake_fd is not None and wake_fd in ready:
            os.read(wake_fd, WAKE_READ_BYTES)

    # ------------------------------------------------------------ scheduled jobs

    def _sample_lag(self) -> None:
        try:
            self.manager.sample_lag(min_interval=self.settings.lag_sample_seconds * LAG_SAMPLE_SKIP_FRACTION)
        except Exception as exc:
            log.warning("lag sampling failed: %s", describe_error(exc))

    def _refresh_views(self) -> None:
        try:
            self.manager.refresh_views(
                min_age=self.settings.view_refresh_seconds * VIEW_REFRESH_SKIP_FRACTION
            )
        except Exception as exc:
            log.warning("view refresh failed: %s", describe_error(exc))

    def _verify_sample(self) -> None:
        try:
            self.manager.verify_sample(min_interval=self.settings.verify_every_seconds * VERIFY_SKIP_FRACTION)
        except Exception as exc:
            log.warning("continuous verification pass failed: %s", describe_error(exc))

    def _prune_lag(self) -> None:
        try:
            self.manager.prune_lag_samples()
        except Exception as exc:
            log.warning("lag pruning failed: %s", describe_error(exc))

    def _start_rebuilds(self) -> None:
        if self._rebuilder is not None and self._rebuilder.is_alive():
            return
        try:
            names = self.manager.requested_rebuilds()
        except Exception as exc:
            log.warning("could not read requested rebuilds: %s", describe_error(exc))
            return
        if names and not self._rebuild_stop.is_set():
            self._rebuilder = threading.Thread(
                target=self._rebuild, args=(names,), name="projection-rebuild", daemon=True
            )
            self._rebuilder.start()

    def _rebuild(self, names: list[str]) -> None:
        for name in names:
            if self._rebuild_stop.is_set():
                return
            try:
                self.manager.rebuild(name, stop=self._rebuild_stop)
            except ConcurrencyError:
                pass  # another process is rebuilding it; the request stays until that one finishes
            except Exception as exc:
                log.error("requested rebuild of %s failed: %s", name, describe_error(exc))
