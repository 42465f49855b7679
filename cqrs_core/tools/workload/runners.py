"""Running plans through the command bus: the demo seed and the steady live load.

`seed()` executes plans on a thread pool: different workflows in parallel, the commands of one
workflow in order (each is one stream). `run_steady_load()` sends commands at a fixed rate from a
token schedule. Nothing here writes a read model: the projections do, from the events the
commands cause.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import CQRSError
from cqrs_core.infra.metrics import percentile
from cqrs_core.service import CQRSService, CQRSServiceBuilder
from cqrs_core.tools.workload.plans import WorkflowPlan, WorkloadGenerator
from cqrs_core.write.commands import Command

log = logging.getLogger(__name__)


@dataclass
class SeedReport:
    """What a seed run did."""

    workflows: int = 0  # plans whose every command succeeded
    commands: int = 0
    duplicates: int = 0  # commands already executed by an earlier run of the same seed
    events: int = 0
    failed_workflows: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # "category: message" → count
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    threads: int = 1

    @property
    def commands_per_second(self) -> float:
        return self.commands / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """Thread-safe counters handed to a `progress(done, total, commands)` callback."""

    def __init__(self, total: int, callback: Callable[[int, int, int], None] | None) -> None:
        self.total, self.callback = total, callback
        self.lock = threading.Lock()
        self.report = SeedReport()

    def plan_done(
        self, plan: WorkflowPlan, commands: int, duplicates: int, events: int, error: CQRSError | None
    ) -> None:
        with self.lock:
            r = self.report
            r.commands += commands
            r.duplicates += duplicates
            r.events += events
            if error is None:
                r.workflows += 1
                r.outcomes[plan.outcome] += 1
            else:
                r.failed_workflows += 1
                r.errors[f"{error.category}: {error.user_message}"] += 1
            if self.callback is not None:  # under the lock: a progress bar is not thread-safe
                self.callback(r.workflows + r.failed_workflows, self.total, r.commands)


# Demo traffic comes from a handful of owners, far above a person's rate limit: one limit that
# nothing here reaches.
TRAFFIC_RATE_LIMIT = (1e9, 10**9)


def traffic_service(
    settings: Settings, url: str, role: str | None = None, *, pool_size: int, direct_url: str | None = None
) -> CQRSService:
    """A service for seeds and loads: the database role's rights (the app's runtime role where
    `role` is given), no migrations, and a rate limit above any person's. `direct_url`: `url` goes
    through a pooler in transaction mode and this one reaches the server itself
    (`CQRSServiceBuilder.with_direct_database_url`)."""
    return (
        CQRSServiceBuilder(settings)
        .with_database_url(url)
        .with_direct_database_url(direct_url)
        .with_database_role(role)
        .with_migrations(False)
        .with_rate_limit(*TRAFFIC_RATE_LIMIT)
        .with_pool_size(pool_size)
        .build()
    )


def execute_plan(service: Any, plan: WorkflowPlan) -> tuple[int, int, int, CQRSError | None]:
    """Run one plan's commands in order; stops at the first refused command.
    Returns (commands executed, duplicates, events appended, the error or None).
    Plans are made here, not typed by a person: they run as a trusted import, so their back-filled
    business times (`occurred_at` in the past) are accepted."""
    executed = duplicates = events = 0
    for command in plan.commands:
        try:
            result = service.execute_command(command, trusted_import=True)
        except CQRSError as exc:
            return executed, duplicates, events, exc
        executed += 1
        if result.duplicate:
            duplicates += 1
        else:
            events += len(result.events)
    return executed, duplicates, events, None


def run_plans(
    service: Any,
    plans: Iterable[WorkflowPlan],
    total: int,
    *,
    threads: int = 8,
    progress: Callable[[int, int, int], None] | None = None,
    batch: int = 1,
) -> SeedReport:
    """Execute plans on `threads` threads: a thread takes `batch` whole plans at a time.

    With `batch` > 1 a thread sends all their commands as one `execute_many` (one transaction,
    two statements); if that batch is refused, its plans are run again one command at a time, so
    a plan that cannot run stops at its first refused command and the others still land."""
    tracker = _Progress(total, progress)
    source = iter(plans)
    source_lock = threading.Lock()  # the generator is not thread-safe; plans come out in seed order
    stop = threading.Event()
    batch = max(1, batch)

    def next_plans() -> list[WorkflowPlan]:
        with source_lock:
            return [] if stop.is_set() else list(itertools.islice(source, batch))

    def work() -> None:
        while chunk := next_plans():
            if batch > 1 and _execute_batch(service, chunk, tracker):
                continue
            for plan in chunk:
                tracker.plan_done(plan, *execute_plan(service, plan))

    started = time.perf_counter()
    threads = max(1, threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        _wait_all([pool.submit(work) for _ in range(threads)], stop)
    report = tracker.report
    report.seconds = time.perf_counter() - started
    report.threads = threads
    return report


def _execute_batch(service: Any, plans: list[WorkflowPlan], tracker: _Progress) -> bool:
    """All the plans' commands in one `execute_many`; False when the batch was refused (nothing
    of it was written)."""
    commands = [cmd for plan in plans for cmd in plan.commands]
    try:
        results = service.execute_many(commands, trusted_import=True)
    except CQRSError as exc:
        log.info(
            "a seed batch of %d workflows was refused (%s); running them one command at a time",
            len(plans),
            exc.user_message,
        )
        return False
    done = 0
    for plan in plans:
        mine = results[done : done + len(plan.commands)]
        done += len(plan.commands)
        duplicates = sum(r.duplicate for r in mine)
        events = sum(len(r.events) for r in mine if not r.duplicate)
        tracker.plan_done(plan, len(mine), duplicates, events, None)
    return True


def _wait_all(futures: list, stop: threading.Event) -> None:
    """Wait for the worker threads; on Ctrl-C tell them to stop, let them finish the workflow in
    hand (its commands stay in order), then let the interrupt through."""
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        stop.set()
        for future in futures:
            future.result()
        raise


SEED_BATCH_WORKFLOWS = 50  # workflows per execute_many in a seed (about 700 commands, 1,000 events)


def seed(
    service: Any,
    workflows: int,
    *,
    seed: int,
    days: float = 90.0,
    threads: int = 2,
    end: datetime | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    batch: int = SEED_BATCH_WORKFLOWS,
) -> SeedReport:
    """Create `workflows` workflows with back-filled lifecycles over the last `days` days, `batch`
    workflows per transaction (1: every command on its own, as the forms send them).

    Build `service` with a high rate limit (`traffic_service`): a seed sends
    thousands of commands a second as a handful of owners."""
    generator = WorkloadGenerator(
        seed, days=days, end=end, max_task_attempts=service.settings.max_task_attempts
    )
    return run_plans(
        service, generator.workflows(workflows), workflows, threads=threads, progress=progress, batch=batch
    )


# ---------------------------------------------------------------- steady load


@dataclass(frozen=True)
class LoadReport:
    """What a steady load achieved: rate, latency (ms) and how late commands started."""

    target_rate: float
    duration_seconds: float
    elapsed_seconds: float
    commands: int
    errors: dict[str, int]
    achieved_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    late_p95_ms: float  # how far behind its slot a command started: > 0 means the system could not keep up
    dropped: int  # slots never sent: the system was too far behind when the time was up
    workflows_started: int
    threads: int


class _LoadSource:
    """Hands out the next command of an open workflow. Each thread keeps its own open workflows
    (so one workflow's commands never run concurrently) and asks here for new ones."""

    def __init__(self, generator: WorkloadGenerator) -> None:
        self.generator = generator
        self.lock = threading.Lock()
        self.started = 0

    def new_plan(self) -> Iterator[Command]:
        with self.lock:
            self.started += 1
            return iter(self.generator.workflow().commands)


def run_steady_load(
    service: Any,
    *,
    rate: float,
    duration: float,
    threads: int = 4,
    seed: int | None = None,
    open_per_thread: int = 8,
    stop: threading.Event | None = None,
) -> LoadReport:
    """Send `rate` commands a second for `duration` seconds from a token schedule: command n is
    due at start + n / rate; a thread takes the next slot, waits for it, and sends the next
    command of one of its open workflows (interleaving them, as real users do). When the system
    is slower than the schedule, commands start late and the achieved rate says so; the load still
    ends on time (plus a short grace for the last late slots) and the slots left are `dropped`.
    Setting `stop` (or Ctrl-C) ends the load early; the report covers what was sent."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    generator = WorkloadGenerator(
        seed if seed is not None else random.SystemRandom().randrange(2**63),
        backfill=False,
        max_task_attempts=service.settings.max_task_attempts,
    )
    source = _LoadSource(generator)
    stop = stop or threading.Event()
    slots = iter(range(2**62))
    slot_lock = threading.Lock()
    total_slots = max(1, math.floor(rate * duration))
    latencies: list[float] = []
    lateness: list[float] = []
    errors: Counter[str] = Counter()
    results_lock = threading.Lock()
    started = time.perf_counter()
    cutoff = started + duration + min(1.0, 0.1 * duration)
    taken = [0]

    def work() -> None:
        open_plans: deque[Iterator[Command]] = deque()
        my_latency: list[float] = []
        my_late: list[float] = []
        my_errors: Counter[str] = Counter()
        while not stop.is_set():
            with slot_lock:
                n = next(slots)
                if n >= total_slots or time.perf_counter() > cutoff:
                    break
                taken[0] += 1
            due = started + n / rate
            wait = due - time.perf_counter()
            if wait > 0:
                if stop.wait(wait):
                    break
            while len(open_plans) < open_per_thread:
                open_plans.append(source.new_plan())
            plan = open_plans.popleft()
            command = next(plan, None)
            while command is None:  # that workflow's lifecycle is over (or had no commands left)
                plan = source.new_plan()
                command = next(plan, None)
            t0 = time.perf_counter()
            my_late.append(max(0.0, t0 - due) * 1000)
            try:
                service.execute_command(command)
                open_plans.append(plan)
            except CQRSError as exc:
                my_errors[exc.category] += 1  # drop that workflow: its next commands depend on this one
            my_latency.append((time.perf_counter() - t0) * 1000)
        with results_lock:
            latencies.extend(my_latency)
            lateness.extend(my_late)
            errors.update(my_errors)

    threads = max(1, threads)
    interrupted = False
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="load") as pool:
        try:
            _wait_all([pool.submit(work) for _ in range(threads)], stop)
        except KeyboardInterrupt:
            interrupted = True
    elapsed = time.perf_counter() - started
    ordered, late = sorted(latencies), sorted(lateness)
    done = len(ordered)
    return LoadReport(
        target_rate=rate,
        duration_seconds=duration,
        elapsed_seconds=elapsed,
        commands=done,
        errors=dict(errors),
        achieved_rate=done / (elapsed if interrupted or stop.is_set() else max(elapsed, duration))
        if done
        else 0.0,
        p50_ms=percentile(ordered, 0.5),
        p95_ms=percentile(ordered, 0.95),
        p99_ms=percentile(ordered, 0.99),
        max_ms=ordered[-1] if ordered else 0.0,
        late_p95_ms=percentile(late, 0.95),
        dropped=0 if interrupted or stop.is_set() else total_slots - taken[0],
        workflows_started=source.started,
        threads=threads,
    )
