"""Workflow plans: a seed turned into workflows and the ordered commands of their lifecycles.

`WorkloadGenerator` turns a seed into *plans*: a workflow (title, question, tags, a DAG of 3–12
tasks with assignees) and the ordered commands of one lifecycle — completed, completed after
failed-and-retried tasks, failed, cancelled, or left running / paused / in draft. Everything
random comes from one `random.Random(seed)`, command ids included, so a seed always yields the
same commands; running the same seed twice therefore changes nothing (the bus de-duplicates by
`command_id`), and an interrupted seed is finished by running it again. The words come from
`vocabulary`; running the plans is `runners`' part.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cqrs_core.tools.workload.vocabulary import (
    CANCEL_REASONS,
    COMPARATORS,
    ESTIMATES,
    EXTRA_TAGS,
    FIELDS,
    FINAL_STATUS,
    METHODOLOGY_WEIGHTS,
    OUTCOME_WEIGHTS,
    PAUSE_REASONS,
    PRIORITY_WEIGHTS,
    QUESTIONS,
    RESEARCHERS,
    RESULTS,
    STAGES,
    TASK_AGENTS,
    TASK_COUNT_WEIGHTS,
    TASK_ERRORS,
    TASK_NAMES,
    TITLES,
    WORKFLOW_FAILURES,
)
from cqrs_core.write.commands import CommandFactory, WorkflowCommand


@dataclass(frozen=True)
class WorkflowPlan:
    """One workflow and the commands of its lifecycle, to be executed in order."""

    workflow_id: uuid.UUID
    owner: str
    outcome: str  # a key of OUTCOME_WEIGHTS
    task_count: int
    commands: tuple[WorkflowCommand, ...]

    @property
    def final_status(self) -> str:
        return FINAL_STATUS[self.outcome]


@dataclass
class _Step:
    method: str
    at: datetime
    fields: dict[str, Any]


@dataclass
class _TaskDraft:
    task_id: uuid.UUID
    name: str
    kind: str
    assignee: str
    estimate_minutes: int
    depends_on: list[uuid.UUID]


class WorkloadGenerator:
    """Deterministic source of workflow plans.

    `backfill=True` stamps each command with a business time (`occurred_at`) so the workflows are
    spread over the `days` before `end`; `backfill=False` leaves it unset for live load, where
    the commit clock is the truth. `max_task_attempts` must match the server's setting: a task
    is retried only while it has attempts left, and a failed workflow's task uses them all."""

    def __init__(
        self,
        seed: int,
        *,
        days: float = 90.0,
        end: datetime | None = None,
        backfill: bool = True,
        max_task_attempts: int = 3,
    ) -> None:
        if days <= 0:
            raise ValueError("days must be positive")
        self.seed = seed
        self.rng = random.Random(seed)
        self.end = (end or datetime.now(UTC)).astimezone(UTC)
        self.start = self.end - timedelta(days=days)
        self.backfill = backfill
        self.max_task_attempts = max(1, max_task_attempts)

    # ------------------------------------------------------------ randomness

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _weighted(self, weights: dict[Any, int]) -> Any:
        return self.rng.choices(tuple(weights), weights=tuple(weights.values()))[0]

    def _minutes(self, low: float, high: float) -> timedelta:
        return timedelta(minutes=self.rng.uniform(low, high))

    # ------------------------------------------------------------ public

    def workflows(self, count: int) -> Iterator[WorkflowPlan]:
        for _ in range(count):
            yield self.workflow()

    def workflow(self) -> WorkflowPlan:
        rng = self.rng
        workflow_id = self._uuid()
        owner = rng.choice(RESEARCHERS)
        methodology = self._weighted(METHODOLOGY_WEIGHTS)
        topic = rng.choice(FIELDS)
        words = {
            "i": rng.choice(topic.interventions),
            "o": rng.choice(topic.outcomes),
            "p": rng.choice(topic.populations),
            "s": rng.choice(topic.settings),
            "c": rng.choice(COMPARATORS),
            "y": str(rng.randint(2005, 2021)),
        }
        words["I"] = words["i"][:1].upper() + words["i"][1:]
        title = rng.choice(TITLES[methodology]).format(**words)
        question = rng.choice(QUESTIONS[methodology]).format(**words)
        tags = rng.sample(topic.tags, k=rng.randint(1, 2))
        tags += rng.sample(EXTRA_TAGS, k=rng.choice((0, 0, 1, 1, 2)))
        priority = self._weighted(PRIORITY_WEIGHTS)

        created = self.start + (self.end - self.start) * rng.random()
        due: date | None = None
        if rng.random() < 0.6:
            due = (created + timedelta(days=rng.randint(14, 120))).date()
        tasks = self._tasks(self._weighted(TASK_COUNT_WEIGHTS))
        outcome = self._weighted(OUTCOME_WEIGHTS)

        steps = [
            _Step(
                "create_research_workflow",
                created,
                dict(
                    workflow_id=workflow_id,
                    title=title,
                    research_question=question,
                    methodology=methodology,
                    tags=tags,
                    priority=priority,
                    due_date=due,
                    tasks=[
                        dict(
                            task_id=t.task_id,
                            name=t.name,
                            kind=t.kind,
                            assignee=t.assignee,
                            estimate_minutes=t.estimate_minutes,
                            depends_on=t.depends_on,
                        )
                        for t in tasks
                    ],
                ),
            )
        ]
        steps += self._lifecycle(outcome, created, tasks)
        factory = CommandFactory(actor=owner, role="researcher")
        commands = tuple(self._materialize(factory, workflow_id, steps, created))
        return WorkflowPlan(workflow_id, owner, outcome, len(tasks), commands)

    # ------------------------------------------------------------ building blocks

    def _tasks(self, count: int) -> list[_TaskDraft]:
        rng = self.rng
        # Spread `count` tasks over the stages in order; every stage present gets at least one task.
        stages = list(STAGES) if count >= len(STAGES) else sorted(rng.sample(STAGES, count), key=STAGES.index)
        per_stage = dict.fromkeys(stages, 1)
        for _ in range(count - len(stages)):
            per_stage[rng.choice(stages[:-1] or stages)] += 1
        drafts: list[_TaskDraft] = []
        previous: list[_TaskDraft] = []
        used: Counter[str] = Counter()
        for stage in stages:
            current: list[_TaskDraft] = []
            kind = stage if rng.random() > 0.05 else "other"
            for _ in range(per_stage[stage]):
                name = rng.choice(TASK_NAMES[kind])
                used[name] += 1
                if used[name] > 1:
                    name = f"{name} (part {used[name]})"
                agents = TASK_AGENTS[kind]
                assignee = rng.choice(agents) if agents and rng.random() < 0.45 else rng.choice(RESEARCHERS)
                depends = (
                    rng.sample(previous, k=min(len(previous), rng.choice((1, 1, 1, 2)))) if previous else []
                )
                low, high = ESTIMATES[kind]
                draft = _TaskDraft(
                    self._uuid(),
                    name,
                    kind,
                    assignee,
                    round(rng.uniform(low, high) / 15) * 15 or 15,
                    [d.task_id for d in depends],
                )
                current.append(draft)
                drafts.append(draft)
            previous = current
        return drafts

    def _lifecycle(self, outcome: str, created: datetime, tasks: list[_TaskDraft]) -> list[_Step]:
        rng = self.rng
        steps: list[_Step] = []
        clock = created

        def step(method: str, after: timedelta, **fields: Any) -> None:
            nonlocal clock
            clock = clock + after
            steps.append(_Step(method, clock, fields))

        if outcome == "draft":
            return steps
        if outcome == "cancelled" and rng.random() < 0.3:
            step("cancel_workflow", timedelta(hours=rng.uniform(1, 72)), reason=rng.choice(CANCEL_REASONS))
            return steps
        step("start_workflow", timedelta(hours=rng.uniform(0.5, 48)))

        n = len(tasks)
        done_before_end = {
            "completed": n,
            "retried": n,
            "failed": rng.randrange(n),
            "cancelled": rng.randrange(n),
            "running": rng.randrange(n),
            "paused": rng.randrange(n),
        }[outcome]
        retried = (
            set(rng.sample(range(n), k=min(n, rng.choice((1, 1, 2))))) if outcome == "retried" else set()
        )
        pause_at = rng.randrange(n) if outcome == "completed" and rng.random() < 0.1 else None

        for index, task in enumerate(tasks[:done_before_end]):
            if index == pause_at:
                step("pause_workflow", self._minutes(10, 600), reason=rng.choice(PAUSE_REASONS))
                step("resume_workflow", timedelta(hours=rng.uniform(2, 96)))
            ids = dict(task_id=task.task_id)
            step("start_task", self._minutes(5, 240), **ids)
            if index in retried:
                for _ in range(
                    rng.randint(1, self.max_task_attempts - 1) if self.max_task_attempts > 1 else 0
                ):
                    step(
                        "fail_task",
                        self._work(task, 0.2, 0.8),
                        error=rng.choice(TASK_ERRORS[task.kind]),
                        **ids,
                    )
                    step("retry_task", self._minutes(15, 720), **ids)
            step("complete_task", self._work(task, 0.6, 1.6), result_summary=self._result(task.kind), **ids)

        if outcome in ("completed", "retried"):
            step("complete_workflow", self._minutes(5, 600))
        elif outcome == "failed":
            task = tasks[done_before_end]
            ids = dict(task_id=task.task_id)
            step("start_task", self._minutes(5, 240), **ids)
            for attempt in range(self.max_task_attempts):
                if attempt:
                    step("retry_task", self._minutes(15, 720), **ids)
                step("fail_task", self._work(task, 0.2, 0.9), error=rng.choice(TASK_ERRORS[task.kind]), **ids)
            step("fail_workflow", self._minutes(30, 1440), reason=rng.choice(WORKFLOW_FAILURES))
        elif outcome == "cancelled":
            if rng.random() < 0.5:
                step("start_task", self._minutes(5, 240), task_id=tasks[done_before_end].task_id)
            step("cancel_workflow", timedelta(hours=rng.uniform(1, 120)), reason=rng.choice(CANCEL_REASONS))
        elif outcome == "running":
            if rng.random() < 0.7:
                step("start_task", self._minutes(5, 240), task_id=tasks[done_before_end].task_id)
        elif outcome == "paused":
            step("pause_workflow", self._minutes(10, 600), reason=rng.choice(PAUSE_REASONS))
        return steps

    def _work(self, task: _TaskDraft, low: float, high: float) -> timedelta:
        return timedelta(minutes=task.estimate_minutes * self.rng.uniform(low, high))

    def _result(self, kind: str) -> str:
        rng = self.rng
        return rng.choice(RESULTS[kind]).format(
            n=rng.randint(40, 900), m=rng.randint(3, 39), k=rng.randint(1, 9)
        )

    @staticmethod
    def _shifted_due(step: _Step, shift: timedelta) -> dict[str, Any]:
        due = step.fields.get("due_date")
        if step.method != "create_research_workflow" or due is None:
            return step.fields
        return {**step.fields, "due_date": (datetime.combine(due, datetime.min.time(), UTC) + shift).date()}

    def _materialize(
        self, factory: CommandFactory, workflow_id: uuid.UUID, steps: list[_Step], created: datetime
    ) -> Iterator[WorkflowCommand]:
        # Back-filled history never lies in the future. A lifecycle that would run past `end` is
        # moved back whole, to end at a random time between `start` plus its length and `end`
        # (its durations and due date kept): compressing it to end at `end` piled every such
        # workflow's last step onto the last day (103 finished "today" against about 20 a day).
        # Only a lifecycle longer than the whole window is compressed into it.
        last = steps[-1].at
        scale = 1.0
        if self.backfill and last > self.end and last > created:
            length = last - created
            room = (self.end - self.start) - length
            if room > timedelta(0):
                shift = (self.start + length + room * self.rng.random()) - last
                steps = [_Step(s.method, s.at + shift, self._shifted_due(s, shift)) for s in steps]
                created = created + shift
            else:
                scale = max(0.0, (self.end - created) / (last - created))
        for s in steps:
            at = created + (s.at - created) * scale
            fields = dict(s.fields)
            if s.method != "create_research_workflow":
                fields["workflow_id"] = workflow_id
            stamp = dict(
                command_id=self._uuid(),
                correlation_id=self._uuid(),
                occurred_at=at if self.backfill else None,
            )
            yield getattr(factory, s.method)(**fields, **stamp)
