"""Builds workflow histories in the event store for the read-side tests, by appending the
domain events directly (EventStore.append with expected versions), one command's worth at a time."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from cqrs_core.domain import events as ev
from cqrs_core.eventlog.store import EventMetadata, EventStore, NewEvent, StoredEvent

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


class History:
    """One workflow's stream; every call appends its events `minutes` after the previous call."""

    def __init__(self, store: EventStore, actor: str = "alice", start: datetime = T0) -> None:
        self.store = store
        self.actor = actor
        self.workflow_id = str(uuid.uuid4())
        self.version = 0
        self.clock = start
        self.tasks: dict[str, str] = {}  # name -> task id
        self.correlation_id = uuid.uuid4()

    @property
    def stream_id(self) -> str:
        return ev.stream_id_for(self.workflow_id)

    def emit(
        self, *events: ev.DomainEvent, actor: str | None = None, minutes: float = 10
    ) -> list[StoredEvent]:
        self.clock += timedelta(minutes=minutes)
        stored = self.store.append(
            self.stream_id,
            self.version,
            [NewEvent(e.event_type, e.to_payload(), e.schema_version) for e in events],
            EventMetadata(
                actor=actor or self.actor, occurred_at=self.clock, correlation_id=self.correlation_id
            ),
        )
        self.version += len(events)
        return stored

    def create(
        self,
        title="Literature review of AI trends",
        question="What are the latest AI trends?",
        methodology="systematic_review",
        tags=("ai", "survey"),
        priority="normal",
        due_date=None,
        minutes: float = 0,
    ):
        return self.emit(
            ev.WorkflowCreated(
                self.workflow_id, title, question, methodology, list(tags), priority, self.actor, due_date
            ),
            minutes=minutes,
        )

    def add_task(
        self,
        name: str,
        kind: str = "analysis",
        assignee: str = "bob",
        estimate: int | None = 30,
        depends_on: tuple[str, ...] = (),
        **kw,
    ) -> str:
        task_id = str(uuid.uuid4())
        self.tasks[name] = task_id
        deps = [self.tasks[d] for d in depends_on]
        self.emit(ev.TaskAdded(task_id, name, kind, assignee, ev.TaskEstimate.of(estimate), deps), **kw)
        return task_id

    def start(self, **kw):
        return self.emit(ev.WorkflowStarted(), **kw)

    def pause(self, reason=None, **kw):
        return self.emit(ev.WorkflowPaused(reason), **kw)

    def resume(self, **kw):
        return self.emit(ev.WorkflowResumed(), **kw)

    def complete(self, reason=None, **kw):
        return self.emit(ev.WorkflowCompleted(reason), **kw)

    def fail(self, reason="ran out of budget", **kw):
        return self.emit(ev.WorkflowFailed(reason), **kw)

    def cancel(self, reason="no longer needed", open_tasks: tuple[str, ...] = (), **kw):
        return self.emit(ev.WorkflowCancelled(reason, [self.tasks[n] for n in open_tasks]), **kw)

    def update(self, **fields):
        minutes = fields.pop("minutes", 10)
        return self.emit(ev.WorkflowDetailsUpdated(**fields), minutes=minutes)

    def start_task(self, name: str, attempt: int = 1, **kw):
        return self.emit(ev.TaskStarted(self.tasks[name], attempt), **kw)

    def complete_task(self, name: str, result: str = "done", **kw):
        return self.emit(ev.TaskCompleted(self.tasks[name], result), **kw)

    def fail_task(self, name: str, error: str = "timeout", attempt: int = 1, **kw):
        return self.emit(ev.TaskFailed(self.tasks[name], error, attempt), **kw)

    def retry_task(self, name: str, attempt: int, **kw):
        return self.emit(ev.TaskRetried(self.tasks[name], attempt), **kw)

    def cancel_task(self, name: str, reason: str = "workflow completed", **kw):
        return self.emit(ev.TaskCancelled(self.tasks[name], reason), **kw)

    def remove_task(self, name: str, **kw):
        return self.emit(ev.TaskRemoved(self.tasks.pop(name)), **kw)


METHODOLOGIES = ("systematic_review", "meta_analysis", "experiment", "case_study")
KINDS = ("search", "screening", "extraction", "analysis", "writing")
PEOPLE = ("alice", "bob", "carol", "dave")


def random_workload(store: EventStore, workflows: int, seed: int = 7, start: datetime = T0) -> list[History]:
    """A mixed, realistic set of histories: every status, retries, removals, cancellations."""
    rng = random.Random(seed)
    out = []
    for i in range(workflows):
        h = History(store, actor=rng.choice(PEOPLE), start=start + timedelta(hours=i * 3))
        h.create(
            title=f"Study {i} of {rng.choice(['sleep', 'diet', 'LLM', 'climate', 'memory'])}",
            methodology=rng.choice(METHODOLOGIES),
            tags=rng.sample(["ai", "health", "bio", "ml", "policy"], k=2),
            priority=rng.choice(["low", "normal", "high", "urgent"]),
            due_date="2024-12-31" if i % 3 == 0 else None,
        )
        names = [f"t{j}" for j in range(rng.randint(0, 5))]
        for name in names:
            h.add_task(name, kind=rng.choice(KINDS), assignee=rng.choice(PEOPLE), minutes=1)
        if names and rng.random() < 0.2:
            h.remove_task(names.pop(), minutes=1)
        outcome = rng.random()
        if outcome < 0.1:
            continue  # stays a draft
        h.start(minutes=5)
        if rng.random() < 0.2:
            h.pause("waiting for data", minutes=30)
            h.resume(minutes=60)
        open_tasks = []
        for name in names:
            h.start_task(name, minutes=rng.randint(5, 90))
            attempt = 1
            while rng.random() < 0.3 and attempt < 3:
                h.fail_task(name, error=f"flaky {attempt}", attempt=attempt, minutes=rng.randint(1, 30))
                attempt += 1
                h.retry_task(name, attempt, minutes=5)
            r = rng.random()
            if r < 0.75:
                h.complete_task(name, result=f"result of {name}", minutes=rng.randint(10, 200))
            elif r < 0.9:
                h.fail_task(name, error="gave up", attempt=attempt, minutes=rng.randint(10, 100))
            else:
                open_tasks.append(name)
        # Every other workflow ends as the domain ends one now (a TaskCancelled per unfinished
        # task first, in the same append); the others as a log written before that event existed.
        ending = [ev.TaskCancelled(h.tasks[n], "workflow ended") for n in open_tasks] if i % 2 else []
        if outcome < 0.55:
            h.emit(*ending, ev.WorkflowCompleted(), minutes=60)
        elif outcome < 0.7:
            h.emit(*ending, ev.WorkflowFailed("ran out of budget"), minutes=60)
        elif outcome < 0.85:
            if ending:
                h.emit(*ending, ev.WorkflowCancelled("no longer needed"), minutes=60)
            else:
                h.cancel(open_tasks=tuple(open_tasks), minutes=60)
        out.append(h)
    return out


def bulk_workload(store: EventStore, workflows: int, tasks: int = 5) -> int:
    """Many events quickly: each workflow's whole history in one append. Returns events written."""
    written = 0
    for i in range(workflows):
        wid = str(uuid.uuid4())
        batch: list[ev.DomainEvent] = [
            ev.WorkflowCreated(
                wid,
                f"Bulk study {i}",
                "Does it scale?",
                METHODOLOGIES[i % 4],
                ["bulk"],
                "normal",
                "load",
                None,
            ),
            ev.WorkflowStarted(),
        ]
        for j in range(tasks):
            tid = str(uuid.uuid4())
            batch += [
                ev.TaskAdded(tid, f"task {j}", KINDS[j % 5], PEOPLE[j % 4], ev.TaskEstimate(10), []),
                ev.TaskStarted(tid, 1),
                ev.TaskCompleted(tid, "ok"),
            ]
        batch.append(ev.WorkflowCompleted())
        store.append(
            ev.stream_id_for(wid),
            0,
            [NewEvent(e.event_type, e.to_payload(), e.schema_version) for e in batch],
            EventMetadata(actor="load"),
        )
        written += len(batch)
    return written


def burn_xids_to_just_below_a_power_of_ten(engine) -> int | None:
    """Advance the server's transaction counter to a few ids below the next power of ten (each
    subtransaction that writes takes one), so the next appends cross e.g. 99999 -> 100000."""
    with engine.connect() as c:
        current = int(c.execute(text("SELECT pg_current_xact_id()::text")).scalar())
        c.rollback()
    boundary = 10 ** len(str(current))
    gap = boundary - current - 4
    if gap > 1_000_000:
        return None
    if gap > 0:
        with engine.begin() as c:
            c.exec_driver_sql(
                f"""DO $$ BEGIN
                      CREATE TEMPORARY TABLE burn (x int);
                      FOR i IN 1..{gap} LOOP
                        BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END;
                      END LOOP;
                    END $$"""
            )
    return boundary


def burn_xids_past_a_power_of_ten(engine) -> int | None:
    """As `burn_xids_to_just_below_a_power_of_ten`, then on to the power of ten itself: the next
    transaction's id is at or above it (more digits than every id before the burn). The power of
    ten, or None when it is too far away."""
    boundary = burn_xids_to_just_below_a_power_of_ten(engine)
    if boundary is None:
        return None
    taken = 0
    while taken < boundary - 1:
        with engine.begin() as c:
            taken = int(c.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())
    return boundary
