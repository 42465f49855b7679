"""The ResearchWorkflow aggregate: rebuilt from its events, it decides what a command does.

Every rule names itself in its error so a person knows what to change. Deciding never
mutates: methods return the events to append; `apply` folds them into state."""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from cqrs_core.domain import events as ev
from cqrs_core.domain.schema import REGISTRY
from cqrs_core.domain.vocabulary import (
    ADMIN,
    OPEN_WORKFLOW_STATUSES,
    UNFINISHED_TASK_STATUSES,
)
from cqrs_core.infra.errors import CorruptStreamError, DomainRuleViolation

MAX_TASKS_PER_WORKFLOW = 200

WorkflowAction = Literal[
    "update_details", "start", "pause", "resume", "complete", "fail", "cancel", "add_task"
]
TaskAction = Literal["remove_task", "start_task", "complete_task", "fail_task", "retry_task"]

# The workflow statuses in which each action may happen, and for a task action also the task
# statuses. The aggregate's guards read these tables, and pages ask `allowed_actions` and
# `allowed_task_actions` which buttons to offer: one table, so the two cannot drift apart.
# (Other rules — dependencies, attempts, who owns the workflow — are checked on top.)
_RUNNING = frozenset({"running"})
WORKFLOW_ACTION_STATUSES: dict[WorkflowAction, frozenset[str]] = {
    "update_details": OPEN_WORKFLOW_STATUSES,
    "start": frozenset({"draft"}),
    "pause": _RUNNING,
    "resume": frozenset({"paused"}),
    "complete": frozenset({"running", "paused"}),
    "fail": frozenset({"running", "paused"}),
    "cancel": OPEN_WORKFLOW_STATUSES,
    "add_task": OPEN_WORKFLOW_STATUSES,
}
TASK_ACTION_STATUSES: dict[TaskAction, tuple[frozenset[str], frozenset[str]]] = {
    # action: (workflow statuses, task statuses)
    "remove_task": (OPEN_WORKFLOW_STATUSES, frozenset({"pending"})),
    "start_task": (_RUNNING, frozenset({"pending"})),
    "complete_task": (_RUNNING, frozenset({"running"})),
    "fail_task": (_RUNNING, frozenset({"running"})),
    "retry_task": (_RUNNING, frozenset({"failed"})),
}


def allowed_actions(status: str | None) -> frozenset[WorkflowAction]:
    """The actions on a workflow that its `status` allows (none once it is finished)."""
    return frozenset(a for a, statuses in WORKFLOW_ACTION_STATUSES.items() if status in statuses)


def allowed_task_actions(workflow_status: str | None, task_status: str) -> frozenset[TaskAction]:
    """The actions on a task that its status and its workflow's status allow."""
    return frozenset(
        a
        for a, (workflow_statuses, task_statuses) in TASK_ACTION_STATUSES.items()
        if workflow_status in workflow_statuses and task_status in task_statuses
    )


def may_change(actor: str, role: str, owner: str) -> bool:
    """Whether `actor`, acting as `role`, may change a workflow that `owner` owns: its owner or an
    admin. (Which roles may send workflow commands at all is the role table's rule.)"""
    return role == ADMIN or actor == owner


# The rules checked on top of the status tables. The aggregate decides with them and pages ask
# them which choices to offer, as they ask `allowed_task_actions`.


def unfinished_dependencies(depends_on: Iterable[str], status_of: Mapping[str, str]) -> list[str]:
    """The task ids in `depends_on` whose task is not completed yet (`status_of`: the workflow's
    task statuses by task id); a task may start only when there are none."""
    return [d for d in depends_on if d in status_of and status_of[d] != "completed"]


def may_retry(attempts: int, max_attempts: int) -> bool:
    """Whether a failed task that has run `attempts` times may run once more."""
    return attempts < max_attempts


def may_depend_on(task_status: str) -> bool:
    """Whether a new task may depend on a task in `task_status`: on any but a cancelled one."""
    return task_status != "cancelled"


@dataclass
class Task:
    task_id: str
    name: str
    kind: str
    assignee: str
    estimate_minutes: int | None
    depends_on: list[str]
    status: str = "pending"
    estimate_confidence: str | None = None
    attempts: int = 0


@dataclass
class ResearchWorkflow:
    workflow_id: str
    version: int = 0
    status: str | None = None  # None until created
    title: str = ""
    research_question: str = ""
    methodology: str = ""
    tags: list[str] = field(default_factory=list)
    priority: str = "normal"
    owner: str = ""
    due_date: str | None = None
    tasks: dict[str, Task] = field(default_factory=dict)

    # The shape of `to_snapshot`'s dict: bump it when that shape changes (a stored snapshot of
    # another shape is then ignored and taken again by replay).
    SNAPSHOT_SCHEMA_VERSION: ClassVar[int] = 1

    # ------------------------------------------------------------ snapshots

    def to_snapshot(self) -> dict[str, Any]:
        """The folded state as plain JSON (the version is stored beside it)."""
        return {
            "status": self.status,
            "title": self.title,
            "research_question": self.research_question,
            "methodology": self.methodology,
            "tags": list(self.tags),
            "priority": self.priority,
            "owner": self.owner,
            "due_date": self.due_date,
            # A list, not an object: the order tasks were added is part of the state.
            "tasks": [
                {
                    "task_id": t.task_id,
                    "name": t.name,
                    "kind": t.kind,
                    "assignee": t.assignee,
                    "estimate_minutes": t.estimate_minutes,
                    "depends_on": list(t.depends_on),
                    "status": t.status,
                    "estimate_confidence": t.estimate_confidence,
                    "attempts": t.attempts,
                }
                for t in self.tasks.values()
            ],
        }

    @classmethod
    def from_snapshot(cls, workflow_id: str, version: int, state: Mapping[str, Any]) -> ResearchWorkflow:
        """The aggregate a snapshot describes; ValueError when `state` is not one `to_snapshot`
        could have written (a damaged row is then ignored, never trusted in part)."""
        try:
            wf = cls(
                workflow_id,
                version=_int(version),
                status=_opt_str(state["status"]),
                title=_str(state["title"]),
                research_question=_str(state["research_question"]),
                methodology=_str(state["methodology"]),
                tags=[_str(t) for t in _list(state["tags"])],
                priority=_str(state["priority"]),
                owner=_str(state["owner"]),
                due_date=_opt_str(state["due_date"]),
            )
            for t in _list(state["tasks"]):
                task = Task(
                    _str(t["task_id"]),
                    _str(t["name"]),
                    _str(t["kind"]),
                    _str(t["assignee"]),
                    None if t["estimate_minutes"] is None else _int(t["estimate_minutes"]),
                    [_str(d) for d in _list(t["depends_on"])],
                    status=_str(t["status"]),
                    estimate_confidence=_opt_str(t["estimate_confidence"]),
                    attempts=_int(t["attempts"]),
                )
                wf.tasks[task.task_id] = task
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a workflow snapshot ({type(exc).__name__}: {exc})"[:200]) from None
        if version < 1 or wf.status is None:
            raise ValueError("not a workflow snapshot (no created workflow at a positive version)")
        return wf

    # ------------------------------------------------------------ state

    @property
    def exists(self) -> bool:
        return self.status is not None

    def apply(self, event: ev.DomainEvent) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}")
        handler(event)
        self.version += 1

    def apply_stored(self, event: ev.DomainEvent, *, stream_id: str, stored_type: str | None = None) -> None:
        """Fold an event read from the log. One its history does not allow (a task event for a
        task the workflow does not have, a cancelled task it never had) is a typed corrupt stream
        naming the event, not a KeyError."""
        try:
            self.apply(event)
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            name = stored_type or event.event_type
            problem = f"{type(exc).__name__}: {exc}"[:200]
            raise CorruptStreamError(
                f"The stored {name[:80]} event at version {self.version + 1} of stream {stream_id} does not "
                f"fit the workflow's history ({problem}), so this workflow cannot be changed until an "
                "operator repairs the stream.",
                event_type=name,
                stream_id=stream_id,
                version=self.version + 1,
                problem=problem,
            ) from None

    def _on_WorkflowCreated(self, e: ev.WorkflowCreated) -> None:
        self.status = "draft"
        self.title, self.research_question, self.methodology = e.title, e.research_question, e.methodology
        self.tags, self.priority, self.owner, self.due_date = list(e.tags), e.priority, e.owner, e.due_date

    def _on_WorkflowDetailsUpdated(self, e: ev.WorkflowDetailsUpdated) -> None:
        for name in ("title", "research_question", "methodology", "priority", "due_date"):
            value = getattr(e, name)
            if value is not None:
                setattr(self, name, value)
        if e.tags is not None:
            self.tags = list(e.tags)

    def _on_WorkflowStarted(self, e) -> None:
        self.status = "running"

    def _on_WorkflowPaused(self, e) -> None:
        self.status = "paused"

    def _on_WorkflowResumed(self, e) -> None:
        self.status = "running"

    def _on_WorkflowCompleted(self, e) -> None:
        self._end("completed")

    def _on_WorkflowFailed(self, e) -> None:
        self._end("failed")

    def _on_WorkflowCancelled(self, e: ev.WorkflowCancelled) -> None:
        self._end("cancelled")
        for task_id in e.cancelled_task_ids:
            self.tasks[task_id].status = "cancelled"

    def _end(self, status: str) -> None:
        # A log written before TaskCancelled existed may end a workflow with tasks unfinished:
        # they are closed all the same (the projections read such a log the same way).
        self.status = status
        for task in self.tasks.values():
            if task.status in UNFINISHED_TASK_STATUSES:
                task.status = "cancelled"

    def _on_TaskCancelled(self, e: ev.TaskCancelled) -> None:
        self.tasks[e.task_id].status = "cancelled"

    def _on_TaskAdded(self, e: ev.TaskAdded) -> None:
        self.tasks[e.task_id] = Task(
            e.task_id,
            e.name,
            e.kind,
            e.assignee,
            e.estimate_minutes,
            list(e.depends_on),
            estimate_confidence=None if e.estimate is None else e.estimate.confidence,
        )

    def _on_TaskRemoved(self, e: ev.TaskRemoved) -> None:
        del self.tasks[e.task_id]

    def _on_TaskStarted(self, e: ev.TaskStarted) -> None:
        task = self.tasks[e.task_id]
        task.status, task.attempts = "running", e.attempt

    def _on_TaskCompleted(self, e: ev.TaskCompleted) -> None:
        self.tasks[e.task_id].status = "completed"

    def _on_TaskFailed(self, e: ev.TaskFailed) -> None:
        self.tasks[e.task_id].status = "failed"

    def _on_TaskRetried(self, e: ev.TaskRetried) -> None:
        task = self.tasks[e.task_id]
        task.status, task.attempts = "running", e.attempt

    # ------------------------------------------------------------ guards

    def _require_exists(self) -> None:
        if not self.exists:
            raise DomainRuleViolation(f"Workflow {self.workflow_id} does not exist.")

    def _require_status(self, allowed: frozenset[str], action: str) -> None:
        self._require_exists()
        if self.status not in allowed:
            wanted = " or ".join(sorted(allowed))
            raise DomainRuleViolation(f"Cannot {action}: the workflow is {self.status}; it must be {wanted}.")

    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise DomainRuleViolation(f"Task {task_id} is not part of this workflow.")
        return task

    def _require_allowed(self, action: WorkflowAction, doing: str) -> None:
        self._require_status(WORKFLOW_ACTION_STATUSES[action], doing)

    def _allowed_task(self, action: TaskAction, task_id: str) -> Task:
        """The task, if the workflow's status and then the task's status allow `action`."""
        workflow_statuses, task_statuses = TASK_ACTION_STATUSES[action]
        verb = action.removesuffix("_task")
        self._require_status(workflow_statuses, f"{verb} a task")
        task = self._task(task_id)
        self._require_task_status(task, task_statuses, verb)
        return task

    def _require_task_status(self, task: Task, allowed: frozenset[str], action: str) -> None:
        if task.status not in allowed:
            wanted = " or ".join(sorted(allowed))
            raise DomainRuleViolation(
                f"Cannot {action} '{task.name}': the task is {task.status}; it must be {wanted}."
            )

    # ------------------------------------------------------------ decisions

    def create(
        self, *, title, research_question, methodology, tags, priority, owner, due_date, tasks
    ) -> list[ev.DomainEvent]:
        if self.exists:
            raise DomainRuleViolation(f"Workflow {self.workflow_id} already exists.")
        created = ev.WorkflowCreated(
            self.workflow_id, title, research_question, methodology, list(tags), priority, owner, due_date
        )
        out: list[ev.DomainEvent] = [created]
        known: set[str] = set()
        if len(tasks) > MAX_TASKS_PER_WORKFLOW:
            raise DomainRuleViolation(f"A workflow can have at most {MAX_TASKS_PER_WORKFLOW} tasks.")
        for spec in tasks:
            if spec.task_id in known:
                raise DomainRuleViolation(
                    f"Task id {spec.task_id} is listed twice; every task needs its own id."
                )
            missing = [d for d in spec.depends_on if d not in known]
            if missing:
                raise DomainRuleViolation(
                    f"Task '{spec.name}' depends on a task that is not listed before it; list tasks in dependency order."
                )
            out.append(
                ev.TaskAdded(
                    spec.task_id,
                    spec.name,
                    spec.kind,
                    spec.assignee,
                    ev.TaskEstimate.of(spec.estimate_minutes, getattr(spec, "estimate_confidence", None)),
                    list(spec.depends_on),
                )
            )
            known.add(spec.task_id)
        return out

    def update_details(self, **changes) -> list[ev.DomainEvent]:
        self._require_allowed("update_details", "update the details")
        diff: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                continue
            current = getattr(self, name)
            if (list(value) if name == "tags" else value) != current:
                diff[name] = list(value) if name == "tags" else value
        if not diff:
            raise DomainRuleViolation("Nothing to update: every field already has that value.")
        return [ev.WorkflowDetailsUpdated(**diff)]

    def start(self) -> list[ev.DomainEvent]:
        self._require_allowed("start", "start the workflow")
        return [ev.WorkflowStarted()]

    def pause(self, reason: str | None) -> list[ev.DomainEvent]:
        self._require_allowed("pause", "pause the workflow")
        return [ev.WorkflowPaused(reason)]

    def resume(self) -> list[ev.DomainEvent]:
        self._require_allowed("resume", "resume the workflow")
        return [ev.WorkflowResumed()]

    def complete(self, actor: str, reason: str | None) -> list[ev.DomainEvent]:
        self._require_allowed("complete", "complete the workflow")
        unfinished = [t for t in self.tasks.values() if t.status != "completed"]
        if unfinished:
            if not reason:
                raise DomainRuleViolation(
                    f"Cannot complete the workflow: {len(unfinished)} task(s) are not completed; "
                    "complete them first, or give a reason to complete it anyway."
                )
            if actor != self.owner:
                raise DomainRuleViolation(
                    "Only the workflow's owner can complete it while tasks are still open."
                )
        return [*self._close_unfinished_tasks("workflow completed"), ev.WorkflowCompleted(reason or None)]

    def fail(self, reason: str) -> list[ev.DomainEvent]:
        self._require_allowed("fail", "fail the workflow")
        return [*self._close_unfinished_tasks("workflow failed"), ev.WorkflowFailed(reason)]

    def cancel(self, reason: str) -> list[ev.DomainEvent]:
        self._require_allowed("cancel", "cancel the workflow")
        return [*self._close_unfinished_tasks("workflow cancelled"), ev.WorkflowCancelled(reason)]

    def _close_unfinished_tasks(self, reason: str) -> list[ev.DomainEvent]:
        """A workflow that ends leaves no task pending or running: each is cancelled by its own
        event, in the order the tasks were added (a failed task keeps its outcome)."""
        return [
            ev.TaskCancelled(t.task_id, reason)
            for t in self.tasks.values()
            if t.status in UNFINISHED_TASK_STATUSES
        ]

    def add_task(
        self, *, task_id, name, kind, assignee, estimate_minutes, depends_on, estimate_confidence=None
    ) -> list[ev.DomainEvent]:
        self._require_allowed("add_task", "add a task")
        if task_id in self.tasks:
            raise DomainRuleViolation(f"Task {task_id} already exists in this workflow.")
        if len(self.tasks) >= MAX_TASKS_PER_WORKFLOW:
            raise DomainRuleViolation(f"A workflow can have at most {MAX_TASKS_PER_WORKFLOW} tasks.")
        for dep in depends_on:
            if dep == task_id:
                raise DomainRuleViolation("A task cannot depend on itself.")
            if dep not in self.tasks:
                raise DomainRuleViolation(f"Dependency {dep} is not a task of this workflow.")
            if not may_depend_on(self.tasks[dep].status):
                raise DomainRuleViolation(f"Dependency '{self.tasks[dep].name}' is cancelled.")
        # A new task can only point at existing tasks, so it can never close a cycle.
        estimate = ev.TaskEstimate.of(estimate_minutes, estimate_confidence)
        return [ev.TaskAdded(task_id, name, kind, assignee, estimate, list(depends_on))]

    def remove_task(self, task_id: str) -> list[ev.DomainEvent]:
        task = self._allowed_task("remove_task", task_id)
        dependants = [t.name for t in self.tasks.values() if task_id in t.depends_on]
        if dependants:
            raise DomainRuleViolation(
                f"Cannot remove '{task.name}': {', '.join(repr(n) for n in dependants)} depend on it."
            )
        return [ev.TaskRemoved(task_id)]

    def start_task(self, task_id: str) -> list[ev.DomainEvent]:
        task = self._allowed_task("start_task", task_id)
        status_of = {t.task_id: t.status for t in self.tasks.values()}
        waiting = [self.tasks[d].name for d in unfinished_dependencies(task.depends_on, status_of)]
        if waiting:
            raise DomainRuleViolation(
                f"Cannot start '{task.name}': its dependencies {', '.join(repr(n) for n in waiting)} are not completed."
            )
        return [ev.TaskStarted(task_id, task.attempts + 1)]

    def complete_task(self, task_id: str, result_summary: str) -> list[ev.DomainEvent]:
        self._allowed_task("complete_task", task_id)
        return [ev.TaskCompleted(task_id, result_summary)]

    def fail_task(self, task_id: str, error: str) -> list[ev.DomainEvent]:
        task = self._allowed_task("fail_task", task_id)
        return [ev.TaskFailed(task_id, error, task.attempts)]

    def retry_task(self, task_id: str, max_attempts: int) -> list[ev.DomainEvent]:
        task = self._allowed_task("retry_task", task_id)
        if not may_retry(task.attempts, max_attempts):
            raise DomainRuleViolation(f"Cannot retry '{task.name}': it has used all {max_attempts} attempts.")
        return [ev.TaskRetried(task_id, task.attempts + 1)]


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected a whole number, found {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, found {type(value).__name__}")
    return value


# The code a snapshot's state depends on: the fold (every `_on_*` handler and what they call),
# the snapshot's own reading and writing, and the task's fields. Not the whole package: a change
# anywhere else keeps every snapshot.
_FOLD_CODE: tuple[Any, ...] = (
    Task,
    ResearchWorkflow.apply,
    ResearchWorkflow._end,
    ResearchWorkflow.to_snapshot,
    ResearchWorkflow.from_snapshot,
    *(getattr(ResearchWorkflow, name) for name in sorted(vars(ResearchWorkflow)) if name.startswith("_on_")),
)
_fingerprints: dict[tuple[Any, ...], str] = {}
_fingerprints_lock = threading.Lock()


def snapshot_fingerprint() -> str:
    """A hash of the source of the aggregate's fold and of every registered upcaster (with the
    versions each step links and each event type's current version). A snapshot taken under
    another fingerprint was folded by other code: it is ignored and taken again by replay, never
    converted. Computed once per set of registered steps (reading source costs milliseconds)."""
    steps = sorted(REGISTRY.steps.items(), key=lambda item: item[0])
    key = (
        tuple((k, id(step.function)) for k, step in steps),
        tuple(sorted(REGISTRY.current_versions().items())),
    )
    with _fingerprints_lock:
        known = _fingerprints.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for code in _FOLD_CODE:
        digest.update(inspect.getsource(code).encode())
    for (event_type, version), step in steps:
        digest.update(f"\n{event_type} {version} -> {step.to_type} {step.to_version}\n".encode())
        digest.update(inspect.getsource(step.function).encode())
    for event_type, version in key[1]:
        digest.update(f"\n{event_type} v{version}".encode())
    print_ = digest.hexdigest()[:32]
    with _fingerprints_lock:
        _fingerprints[key] = print_
    return print_


def load(workflow_id: str, history: list[ev.DomainEvent]) -> ResearchWorkflow:
    wf = ResearchWorkflow(workflow_id)
    for e in history:
        wf.apply(e)
    return wf
