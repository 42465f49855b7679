"""Presenter tools behind the Demo page: seed demo data in the background, run a live load that
can be started and stopped, inject a deliberate fault (a poison event), and reset everything.

Every action needs the operator role (or admin), and a reset the admin role; the checks live
here, not only in the page.
Long work runs in background threads owned by a `DemoController` (one per service, shared by
every session of the process); those threads talk only to cqrs_core, never to Streamlit — the
page polls `snapshot()`s. Seeding and the load come from `cqrs_core.tools.workload.runners`, the
reset from `cqrs_core.ops.reset`; nothing here writes a read model.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cqrs_core.domain.events import stream_id_for
from cqrs_core.domain.vocabulary import role_holds
from cqrs_core.eventlog.audit import record_action, record_refusal
from cqrs_core.eventlog.store import EventMetadata, EventStore, NewEvent, StoredEvent
from cqrs_core.infra.errors import AuthorizationError, CQRSError, ValidationError
from cqrs_core.ops.reset import reset as reset_store
from cqrs_core.tools.workload import runners

log = logging.getLogger(__name__)

MAX_SEED_WORKFLOWS = 100_000
MAX_LOAD_RATE = 2_000.0
# A forgotten live load ends by itself after this long.
MAX_LOAD_SECONDS = 30 * 60.0
RECENT_WINDOW_SECONDS = 5.0


def require_admin(role: str, action: str) -> None:
    """Raise AuthorizationError unless `role` is admin (a reset deletes every event)."""
    if role != "admin":
        raise AuthorizationError(f"Only an admin can {action}; ask an admin to do it.", role=role)


def require_operator(role: str, action: str) -> None:
    """Raise AuthorizationError unless `role` may run presenter actions (operator or admin)."""
    if not role_holds(role, "operator"):
        raise AuthorizationError(f"A {role} cannot {action}; it needs the operator role.", role=role)


# ---------------------------------------------------------------- fault injection


def inject_poison_event(store: EventStore, *, actor: str, role: str) -> StoredEvent:
    """Deliberate fault injection, for demos only: append an event no projection can apply.

    It is a `TaskStarted` for a task of a workflow that was never created, in a fresh stream of
    its own, appended through the event store API (the aggregate would refuse to decide it, so it
    cannot come through the command bus). The projections that need the workflow or the task fail
    on it, retry, and park it; then, by each projection's failure policy, they skip it and go on
    ("skip") or stop in front of it ("fault") until an operator discards it. Because the stream
    is its own, no real workflow's history is touched. Returns the stored event."""
    require_operator(role, "inject a poison event")
    workflow_id = str(uuid.uuid4())
    [event] = store.append(
        stream_id_for(workflow_id),
        0,
        [NewEvent("TaskStarted", {"task_id": str(uuid.uuid4()), "attempt": 1})],
        EventMetadata(actor=actor, correlation_id=uuid.uuid4()),
    )
    log.warning("demo fault injected by %s: poison event at position %d", actor, event.position)
    return event


# ---------------------------------------------------------------- seeding


def _failure_line(job: str, exc: Exception) -> str:
    """What the Demo page shows when a background job stops: a refusal's own sentence, or, for a
    bug, one sentence here and the traceback in the log."""
    if isinstance(exc, CQRSError):
        return exc.user_message
    log.error("demo %s failed", job, exc_info=exc)
    return f"The {job} stopped on an unexpected error; the server log has the details."


@dataclass(frozen=True)
class SeedSnapshot:
    """Where a background seed is (or how the last one ended)."""

    running: bool
    total: int = 0
    done: int = 0  # workflows finished (successfully or not)
    commands: int = 0
    seed: int | None = None
    elapsed_seconds: float = 0.0
    report: runners.SeedReport | None = None
    failure: str | None = None  # one sentence when the seed stopped on an error

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.running or not self.done or self.elapsed_seconds <= 0:
            return None
        return (self.total - self.done) * self.elapsed_seconds / self.done


class SeedJob:
    """Runs `runners.seed` in a background thread and keeps its progress."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._total = self._done = self._commands = 0
        self._seed: int | None = None
        self._started = 0.0
        self._finished: float | None = None
        self._report: runners.SeedReport | None = None
        self._failure: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, workflows: int, *, seed: int | None = None, days: float = 90.0, threads: int = 2) -> int:
        """Start seeding `workflows` workflows; returns the random seed used."""
        if not 1 <= workflows <= MAX_SEED_WORKFLOWS:
            raise ValidationError(f"Choose between 1 and {MAX_SEED_WORKFLOWS:,} workflows.")
        with self._lock:
            if self.running:
                raise ValidationError("A seed is already running; wait for it to finish.")
            self._seed = seed if seed is not None else random.SystemRandom().randrange(1, 10**9)
            self._total, self._done, self._commands = workflows, 0, 0
            self._started, self._finished = time.monotonic(), None
            self._report, self._failure = None, None
            self._thread = threading.Thread(
                target=self._run, args=(workflows, self._seed, days, threads), name="demo-seed", daemon=True
            )
            self._thread.start()
            return self._seed

    def _progress(self, done: int, total: int, commands: int) -> None:
        with self._lock:
            self._done, self._commands = done, commands

    def _run(self, workflows: int, seed: int, days: float, threads: int) -> None:
        service = None
        try:
            # Demo traffic comes from a handful of owners, far above a person's rate limit, so the
            # seed gets a service of its own (as `cqrs-console demo seed` does).
            url = self._service.engine.url.render_as_string(hide_password=False)
            role = getattr(self._service, "database_role", None)
            service = runners.traffic_service(
                self._service.settings, url, role, pool_size=threads + 2, direct_url=self._service.direct_url
            )
            report = runners.seed(
                service, workflows, seed=seed, days=days, threads=threads, progress=self._progress
            )
            with self._lock:
                self._report = report
        except Exception as exc:
            failure = _failure_line("seed", exc)
            with self._lock:
                self._failure = failure
        finally:
            if service is not None:
                service.close()
            with self._lock:
                self._finished = time.monotonic()

    def forget(self) -> None:
        """Forget the last seed's progress and report (after a reset, the data it describes is
        gone). A running seed is not forgotten."""
        with self._lock:
            if self.running:
                return
            self._seed, self._report, self._failure, self._finished = None, None, None, None
            self._total = self._done = self._commands = 0

    def snapshot(self) -> SeedSnapshot:
        with self._lock:
            if self._seed is None:
                return SeedSnapshot(running=False)
            end = self._finished if self._finished is not None else time.monotonic()
            report = self._report
            done = report.workflows + report.failed_workflows if report is not None else self._done
            return SeedSnapshot(
                running=self.running,
                total=self._total,
                done=done,
                commands=report.commands if report is not None else self._commands,
                seed=self._seed,
                elapsed_seconds=end - self._started,
                report=report,
                failure=self._failure,
            )


# ---------------------------------------------------------------- live load


@dataclass(frozen=True)
class LoadSnapshot:
    """What the live load is doing (or did, once stopped)."""

    running: bool
    target_rate: float = 0.0
    threads: int = 0
    commands: int = 0  # commands that succeeded
    errors: dict[str, int] = field(default_factory=dict)  # refused commands by error category
    elapsed_seconds: float = 0.0
    recent_rate: float = 0.0  # successful commands/s over the last few seconds
    report: runners.LoadReport | None = None  # set once the load has ended
    failure: str | None = None

    @property
    def achieved_rate(self) -> float:
        return self.commands / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


class _CountingService:
    """The service, as `run_steady_load` sees it, counting every command as it completes."""

    def __init__(self, service: Any, load: LiveLoad) -> None:
        self._service = service
        self._load = load
        self.settings = service.settings

    def execute_command(self, command: Any) -> Any:
        try:
            result = self._service.execute_command(command)
        except CQRSError as exc:
            self._load._count(exc.category)
            raise
        self._load._count(None)
        return result


class LiveLoad:
    """A steady stream of realistic commands at a chosen rate, through the shared service (so
    the System page's metrics include it), until stopped or for at most MAX_LOAD_SECONDS."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rate = 0.0
        self._threads = 0
        self._commands = 0
        self._errors: Counter[str] = Counter()
        self._recent: deque[float] = deque(maxlen=int(MAX_LOAD_RATE * RECENT_WINDOW_SECONDS))
        self._started = 0.0
        self._finished: float | None = None
        self._report: runners.LoadReport | None = None
        self._failure: str | None = None
        # The load's sender threads belong to a ThreadPoolExecutor, which the interpreter joins
        # when the process exits; without this hook, stopping the server would wait for the
        # whole load (up to MAX_LOAD_SECONDS) to run out. Threading's exit hooks run before that
        # join, newest first (concurrent.futures uses the same private hook for its own workers).
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(lambda: self._stop.set())

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, rate: float, *, threads: int | None = None, duration: float = MAX_LOAD_SECONDS) -> None:
        """Start sending `rate` commands a second (returns at once)."""
        if not 0 < rate <= MAX_LOAD_RATE:
            raise ValidationError(f"Choose a rate between 1 and {MAX_LOAD_RATE:,.0f} commands per second.")
        with self._lock:
            if self.running:
                raise ValidationError("A live load is already running; stop it first.")
            # One thread keeps up with a few dozen commands a second; more threads for more.
            self._threads = threads or min(16, max(2, math.ceil(rate / 40)))
            self._rate = float(rate)
            self._commands = 0
            self._errors = Counter()
            self._recent.clear()
            self._started, self._finished = time.monotonic(), None
            self._report, self._failure = None, None
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(duration,), name="demo-load", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> LoadSnapshot:
        """Stop after the commands in flight; returns the final snapshot."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.snapshot()

    def _count(self, error_category: str | None) -> None:
        with self._lock:
            if error_category is None:
                self._commands += 1
                self._recent.append(time.monotonic())
            else:
                self._errors[error_category] += 1

    def _run(self, duration: float) -> None:
        try:
            report = runners.run_steady_load(
                _CountingService(self._service, self),
                rate=self._rate,
                duration=duration,
                threads=self._threads,
                stop=self._stop,
            )
            with self._lock:
                self._report = report
        except Exception as exc:
            failure = _failure_line("live load", exc)
            with self._lock:
                self._failure = failure
        finally:
            with self._lock:
                self._finished = time.monotonic()

    def snapshot(self) -> LoadSnapshot:
        with self._lock:
            if not self._started:
                return LoadSnapshot(running=False)
            now = time.monotonic()
            end = self._finished if self._finished is not None else now
            window = min(RECENT_WINDOW_SECONDS, max(1e-9, end - self._started))
            recent = (
                sum(1 for t in self._recent if t >= end - window) / window if self._finished is None else 0.0
            )
            return LoadSnapshot(
                running=self.running,
                target_rate=self._rate,
                threads=self._threads,
                commands=self._commands,
                errors=dict(self._errors),
                elapsed_seconds=end - self._started,
                recent_rate=recent,
                report=self._report,
                failure=self._failure,
            )


# ---------------------------------------------------------------- the controller


@dataclass(frozen=True)
class ResetSummary:
    events: int
    commands: int
    tables: int
    stopped_load: bool


class DemoController:
    """The presenter's actions against one service; get it with `demo_controller(service)`."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.seeding = SeedJob(service)
        self.load = LiveLoad(service)
        self.last_fault: StoredEvent | None = None
        self.last_fault_at: datetime | None = None

    def seed(
        self,
        workflows: int,
        *,
        role: str,
        seed: int | None = None,
        days: float = 90.0,
        actor: str | None = None,
    ) -> int:
        """Start seeding in the background; returns the random seed (the same seed gives the same data)."""
        with self._audited(
            actor, role, "demo.seed", {"workflows": workflows, "seed": seed, "days": days}
        ) as a:
            require_operator(role, "seed demo data")
            used = self.seeding.start(workflows, seed=seed, days=days)
            a.detail = f"random seed {used}"
        return used

    def start_load(self, rate: float, *, role: str, actor: str | None = None) -> None:
        with self._audited(actor, role, "demo.load_start", {"rate": rate}):
            require_operator(role, "start a live load")
            self.load.start(rate)

    def stop_load(self, *, role: str, actor: str | None = None) -> LoadSnapshot:
        with self._audited(actor, role, "demo.load_stop", {}) as a:
            require_operator(role, "stop the live load")
            snapshot = self.load.stop()
            a.detail = f"{snapshot.commands:,} commands ran"
        return snapshot

    def inject_poison_event(self, *, actor: str, role: str) -> StoredEvent:
        with self._audited(actor, role, "demo.poison", {}) as a:
            event = inject_poison_event(self.service.event_store, actor=actor, role=role)
            a.detail = f"poison event at position {event.position:,}"
        self.last_fault, self.last_fault_at = event, datetime.now(UTC)
        return event

    def reset(self, *, role: str, actor: str | None = None) -> ResetSummary:
        """Admins only: stop the live load, then delete every event, command and read-model row
        (`cqrs_core.ops.reset`, audited under `actor`) and forget cached query results. The reset
        itself puts an accepted reset on the timeline; a refusal is recorded here."""
        who = actor or role
        try:
            require_admin(role, "reset the demo data")
            if self.seeding.running:
                raise ValidationError("A seed is still running; wait for it to finish, then reset.")
            stopped = self.load.running
            if stopped:
                self.load.stop()
            report = reset_store(self.service.engine, actor=who, role=role)
        except CQRSError as exc:
            record_refusal(
                self.service.engine, actor=who, role=role, action="demo.reset", detail=exc.user_message
            )
            raise
        self.service.query_bus.cache.clear()
        self.last_fault = self.last_fault_at = None
        self.seeding.forget()  # its report described data that is gone
        return ResetSummary(report.events, report.commands, len(report.tables), stopped)

    @contextmanager
    def _audited(
        self, actor: str | None, role: str, action: str, parameters: dict[str, Any]
    ) -> Iterator[_Audit]:
        """Put the action in the block on the audit timeline: accepted (with the `detail` the
        block set) when it ends, refused with the person's sentence when it raises."""
        audit = _Audit()
        who = actor or role
        try:
            yield audit
        except CQRSError as exc:
            record_refusal(
                self.service.engine,
                actor=who,
                role=role,
                action=action,
                parameters=parameters,
                detail=exc.user_message,
            )
            raise
        record_action(
            self.service.engine,
            actor=who,
            role=role,
            action=action,
            parameters=parameters,
            outcome="accepted",
            detail=audit.detail,
        )


@dataclass
class _Audit:
    detail: str | None = None


_controllers: weakref.WeakKeyDictionary[Any, DemoController] = weakref.WeakKeyDictionary()
_controllers_lock = threading.Lock()


def demo_controller(service: Any) -> DemoController:
    """The one DemoController of `service` in this process (created on first use), so every
    session sees the same seed progress and live load."""
    with _controllers_lock:
        controller = _controllers.get(service)
        if controller is None:
            controller = _controllers[service] = DemoController(service)
        return controller
