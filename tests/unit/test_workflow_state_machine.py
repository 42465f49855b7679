"""Random command sequences never break an invariant of the ResearchWorkflow aggregate.

Hypothesis drives one workflow through creation (0–5 tasks with dependencies in a valid
order) and then any mix of workflow and task commands, by the owner or someone else. Each
step decides: a refusal must leave the aggregate untouched; otherwise the events are applied
and kept, so the state can be rebuilt from the history as the command bus does. Each step
also checks that the command was accepted exactly when the lifecycle rules allow it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cqrs_core.domain import events as ev
from cqrs_core.domain.vocabulary import TERMINAL_WORKFLOW_STATUSES
from cqrs_core.domain.workflow import MAX_TASKS_PER_WORKFLOW, ResearchWorkflow, Task, load
from cqrs_core.infra.errors import DomainRuleViolation

OWNER = "olivia"
MAX_ATTEMPTS = 3
OPEN = ("draft", "running", "paused")
ACTORS = st.sampled_from([OWNER, "sam"])
REASONS = st.sampled_from([None, "", "out of scope", "out of scope"])
RARELY = st.sampled_from([False, False, False, False, True])
KINDS = st.sampled_from(["literature_search", "data_collection", "analysis", "synthesis", "review", "other"])
# Which task a command names: an index into the ids used so far (removed ones included, so
# commands on a task that is gone are tried too).
PICK = st.integers(min_value=0, max_value=10_000)


@dataclass(frozen=True)
class _Spec:
    """A task listed at creation, shaped like what the command bus hands the aggregate."""

    task_id: str
    kind: str
    depends_on: list[str]
    assignee: str = "agent-1"
    estimate_minutes: int | None = 15

    @property
    def name(self) -> str:
        return f"Task {self.task_id}"


class WorkflowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.wf = ResearchWorkflow("wf-1")
        self.history: list[ev.DomainEvent] = []
        self.ids: list[str] = []
        self.terminal_status: str | None = None
        self.completed_with_reason = False

    # ------------------------------------------------------------ driving

    def _new_id(self) -> str:
        task_id = f"t{len(self.ids) + 1}"
        self.ids.append(task_id)
        return task_id

    def _pick(self, pick: int) -> str:
        return self.ids[pick % len(self.ids)] if self.ids else "t-none"

    def _decide(self, decision: Callable[[], list[ev.DomainEvent]], allowed: bool) -> list[ev.DomainEvent]:
        """Decide; a refusal must leave the aggregate as it was, a decision is applied.

        `allowed` is what the lifecycle rules say should happen."""
        before = copy.deepcopy(self.wf)
        try:
            decided = decision()
        except DomainRuleViolation as refused:
            assert not allowed, f"refused a command the rules allow: {refused}"
            assert self.wf == before
            return []
        assert allowed, f"accepted a command the rules refuse: {decided}"
        assert self.wf == before, "deciding must not change the aggregate"
        assert decided, "an accepted command produces at least one event"
        for e in decided:
            self.wf.apply(e)
            self.history.append(e)
            if isinstance(e, ev.WorkflowCompleted) and e.reason:
                self.completed_with_reason = True
        if self.wf.status in TERMINAL_WORKFLOW_STATUSES and self.terminal_status is None:
            self.terminal_status = self.wf.status
        return decided

    def _task(self, task_id: str) -> Task | None:
        return self.wf.tasks.get(task_id)

    def _task_in(self, task_id: str, *statuses: str) -> bool:
        task = self._task(task_id)
        return task is not None and task.status in statuses

    # ------------------------------------------------------------ workflow rules

    @initialize(
        layout=st.lists(st.tuples(KINDS, st.lists(PICK, max_size=3)), max_size=5),
        start_at_once=st.sampled_from([True, True, True, False]),
    )
    def create(self, layout, start_at_once):
        specs: list[_Spec] = []
        for position, (kind, picks) in enumerate(layout):
            earlier = sorted({specs[p % position].task_id for p in picks}) if position else []
            specs.append(_Spec(self._new_id(), kind, earlier))
        self._decide(
            lambda: self.wf.create(
                title="Sleep and memory",
                research_question="Does sleep help recall?",
                methodology="exploratory",
                tags=["sleep"],
                priority="normal",
                owner=OWNER,
                due_date=None,
                tasks=specs,
            ),
            allowed=True,
        )
        if start_at_once:  # most runs skip the draft phase and spend their steps on tasks
            self._decide(self.wf.start, allowed=True)

    @rule(
        title=st.sampled_from([None, "Sleep and memory", "Sleep and recall"]),
        priority=st.sampled_from([None, "normal", "urgent"]),
    )
    def update_details(self, title, priority):
        new_title = title is not None and title != self.wf.title
        new_priority = priority is not None and priority != self.wf.priority
        self._decide(
            lambda: self.wf.update_details(title=title, priority=priority),
            allowed=(new_title or new_priority) and self.wf.status in OPEN,
        )

    # Every workflow-level command shares one rule, so that most runs spend many steps on an open
    # workflow instead of ending it within a few steps and leaving the task lifecycle unexplored.
    @rule(
        move=st.sampled_from(
            [
                "start",
                "start",
                "pause",
                "resume",
                "complete",
                "complete",
                "fail",
                "cancel",
                "cancel",
                "create",
            ]
        ),
        actor=ACTORS,
        reason=REASONS,
    )
    def move_workflow(self, move, actor, reason):
        status = self.wf.status
        unfinished_before = [t.task_id for t in self.wf.tasks.values() if t.status in ("pending", "running")]
        decided = None
        if move == "create":  # a second create, whatever the state
            self._decide(
                lambda: self.wf.create(
                    title="Again",
                    research_question="q",
                    methodology="exploratory",
                    tags=[],
                    priority="low",
                    owner=actor,
                    due_date=None,
                    tasks=[],
                ),
                allowed=False,
            )
        elif move == "start":
            self._decide(self.wf.start, allowed=status == "draft")
        elif move == "pause":
            self._decide(lambda: self.wf.pause(reason or None), allowed=status == "running")
        elif move == "resume":
            self._decide(self.wf.resume, allowed=status == "paused")
        elif move == "complete":
            all_done = all(t.status == "completed" for t in self.wf.tasks.values())
            may_force = bool(reason) and actor == OWNER
            decided = self._decide(
                lambda: self.wf.complete(actor, reason),
                allowed=status in ("running", "paused") and (all_done or may_force),
            )
            if decided:
                assert decided == [
                    *(ev.TaskCancelled(t, "workflow completed") for t in unfinished_before),
                    ev.WorkflowCompleted(reason or None),
                ]
        elif move == "fail":
            decided = self._decide(
                lambda: self.wf.fail("funding stopped"), allowed=status in ("running", "paused")
            )
            if decided:
                assert decided == [
                    *(ev.TaskCancelled(t, "workflow failed") for t in unfinished_before),
                    ev.WorkflowFailed("funding stopped"),
                ]
        else:
            decided = self._decide(lambda: self.wf.cancel("no longer needed"), allowed=status in OPEN)
            if decided:
                assert decided == [
                    *(ev.TaskCancelled(t, "workflow cancelled") for t in unfinished_before),
                    ev.WorkflowCancelled("no longer needed"),
                ]
        if decided and self.wf.status not in OPEN:
            assert not any(t.status in ("pending", "running") for t in self.wf.tasks.values())

    # ------------------------------------------------------------ task rules

    @rule(
        kind=KINDS,
        depends_on=st.lists(PICK, max_size=2),
        on_itself=RARELY,
        on_a_stranger=RARELY,
        reuse_an_id=RARELY,
        reused=PICK,
    )
    def add_task(self, kind, depends_on, on_itself, on_a_stranger, reuse_an_id, reused):
        deps = sorted({self._pick(p) for p in depends_on}) if self.ids else []
        task_id = self._pick(reused) if reuse_an_id and self.ids else self._new_id()
        deps += [task_id] if on_itself else []
        deps += ["stranger"] if on_a_stranger else []
        # An id whose task was removed may be used again; one in use may not.
        allowed = (
            self.wf.status in OPEN
            and task_id not in self.wf.tasks
            and len(self.wf.tasks) < MAX_TASKS_PER_WORKFLOW
            and all(d in self.wf.tasks for d in deps)
        )
        self._decide(
            lambda: self.wf.add_task(
                task_id=task_id,
                name=f"Task {task_id}",
                kind=kind,
                assignee="agent-2",
                estimate_minutes=None,
                depends_on=deps,
            ),
            allowed=allowed,
        )

    @rule(pick=PICK)
    def remove_task(self, pick):
        task_id = self._pick(pick)
        depended_on = any(task_id in t.depends_on for t in self.wf.tasks.values())
        self._decide(
            lambda: self.wf.remove_task(task_id),
            allowed=self.wf.status in OPEN and self._task_in(task_id, "pending") and not depended_on,
        )

    @rule(command=st.sampled_from(["start", "complete", "fail", "retry"]), pick=PICK)
    def task_command(self, command, pick):
        """Any task command on any task, whatever state it is in."""
        task_id = self._pick(pick)
        {
            "start": self._start_task,
            "complete": self._complete_task,
            "fail": self._fail_task,
            "retry": self._retry_task,
        }[command](task_id)

    @rule(pick=PICK, succeed=st.booleans(), steps=st.integers(min_value=1, max_value=8))
    def advance_task(self, pick, succeed, steps):
        """Take a task through several next steps, all succeeding or all failing, so that runs get
        past the first refusal and reach retries, exhausted attempts and cancelled failures."""
        task_id = self._pick(pick)
        for _ in range(steps):
            task = self._task(task_id)
            if task is None or task.status == "pending":
                decided = self._start_task(task_id)
            elif task.status == "running" and succeed:
                decided = self._complete_task(task_id)
            elif task.status == "running":
                decided = self._fail_task(task_id)
            else:
                decided = self._retry_task(task_id)
            if not decided:
                return

    def _start_task(self, task_id: str) -> list[ev.DomainEvent]:
        task = self._task(task_id)
        ready = task is not None and all(self.wf.tasks[d].status == "completed" for d in task.depends_on)
        decided = self._decide(
            lambda: self.wf.start_task(task_id),
            allowed=self.wf.status == "running" and self._task_in(task_id, "pending") and ready,
        )
        if decided:
            assert decided == [ev.TaskStarted(task_id, 1)]
        return decided

    def _complete_task(self, task_id: str) -> list[ev.DomainEvent]:
        return self._decide(
            lambda: self.wf.complete_task(task_id, "summary of findings"),
            allowed=self.wf.status == "running" and self._task_in(task_id, "running"),
        )

    def _fail_task(self, task_id: str) -> list[ev.DomainEvent]:
        return self._decide(
            lambda: self.wf.fail_task(task_id, "upstream API timed out"),
            allowed=self.wf.status == "running" and self._task_in(task_id, "running"),
        )

    def _retry_task(self, task_id: str) -> list[ev.DomainEvent]:
        task = self._task(task_id)
        attempts_before = task.attempts if task is not None else 0
        decided = self._decide(
            lambda: self.wf.retry_task(task_id, MAX_ATTEMPTS),
            allowed=(
                self.wf.status == "running"
                and self._task_in(task_id, "failed")
                and attempts_before < MAX_ATTEMPTS
            ),
        )
        if decided:
            assert decided == [ev.TaskRetried(task_id, attempts_before + 1)]
        return decided

    # ------------------------------------------------------------ invariants

    @invariant()
    def version_counts_the_applied_events(self):
        assert self.wf.version == len(self.history)

    @invariant()
    def a_running_task_has_all_its_dependencies_completed(self):
        for task in self.wf.tasks.values():
            if task.status == "running":
                assert all(self.wf.tasks[d].status == "completed" for d in task.depends_on), task

    @invariant()
    def dependencies_point_at_other_tasks_of_the_workflow(self):
        for task in self.wf.tasks.values():
            assert task.task_id not in task.depends_on
            assert all(d in self.wf.tasks for d in task.depends_on)

    @invariant()
    def every_added_task_is_held_once(self):
        added = sum(isinstance(e, ev.TaskAdded) for e in self.history)
        removed = sum(isinstance(e, ev.TaskRemoved) for e in self.history)
        assert len(self.wf.tasks) == added - removed

    @invariant()
    def an_ended_workflow_has_no_unfinished_task(self):
        if self.wf.status in TERMINAL_WORKFLOW_STATUSES:
            assert all(t.status in ("completed", "failed", "cancelled") for t in self.wf.tasks.values())

    @invariant()
    def only_an_ended_workflow_has_cancelled_tasks(self):
        if self.wf.status not in TERMINAL_WORKFLOW_STATUSES:
            assert all(t.status != "cancelled" for t in self.wf.tasks.values())

    @invariant()
    def a_terminal_status_never_changes(self):
        if self.terminal_status is not None:
            assert self.wf.status == self.terminal_status

    @invariant()
    def attempts_never_exceed_the_maximum(self):
        for task in self.wf.tasks.values():
            assert 0 <= task.attempts <= MAX_ATTEMPTS
            if task.status == "pending":
                assert task.attempts == 0
            elif task.status in ("running", "completed", "failed"):
                assert task.attempts >= 1

    @invariant()
    def a_completed_workflow_has_every_task_completed_or_a_reason(self):
        if self.wf.status == "completed":
            assert self.completed_with_reason or all(t.status == "completed" for t in self.wf.tasks.values())

    @invariant()
    def rebuilding_from_stored_events_gives_the_same_state(self):
        stored = [ev.event_from_payload(e.event_type, e.to_payload()) for e in self.history]
        assert stored == self.history
        assert load(self.wf.workflow_id, stored) == self.wf


WorkflowMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_random_command_sequences_never_break_an_invariant = WorkflowMachine.TestCase
