"""The actions the pages offer come from the core's `allowed_actions` / `allowed_task_actions`;
these tests prove that those tables and the aggregate's own guards agree for every workflow
status and every task status, that the owner check the pages ask is the command bus's, and
that the rules on top (dependencies, attempts) the pages ask are the ones the aggregate decides by.

No database: the aggregate is built from its events and asked directly."""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import pytest

from cqrs_core.domain import events as ev
from cqrs_core.domain.vocabulary import TASK_STATUSES, TERMINAL_WORKFLOW_STATUSES, WORKFLOW_STATUSES
from cqrs_core.domain.workflow import (
    ResearchWorkflow,
    TaskAction,
    WorkflowAction,
    allowed_actions,
    allowed_task_actions,
    may_change,
    may_depend_on,
    may_retry,
    unfinished_dependencies,
)
from cqrs_core.infra.errors import DomainRuleViolation

OWNER = "olivia"
TASK = "t-1"

# One call per action, with arguments that satisfy every rule but the status rules (the task has
# no dependencies and attempts left, the owner gives a reason to complete with open tasks).
WORKFLOW_CALLS: dict[str, Callable[[ResearchWorkflow], list[ev.DomainEvent]]] = {
    "update_details": lambda wf: wf.update_details(title="Another title"),
    "start": lambda wf: wf.start(),
    "pause": lambda wf: wf.pause(None),
    "resume": lambda wf: wf.resume(),
    "complete": lambda wf: wf.complete(OWNER, "finished early"),
    "fail": lambda wf: wf.fail("the data source was withdrawn"),
    "cancel": lambda wf: wf.cancel("no longer needed"),
    "add_task": lambda wf: wf.add_task(
        task_id="t-new", name="New", kind="other", assignee="a", estimate_minutes=None, depends_on=[]
    ),
}
TASK_CALLS: dict[str, Callable[[ResearchWorkflow], list[ev.DomainEvent]]] = {
    "remove_task": lambda wf: wf.remove_task(TASK),
    "start_task": lambda wf: wf.start_task(TASK),
    "complete_task": lambda wf: wf.complete_task(TASK, "done"),
    "fail_task": lambda wf: wf.fail_task(TASK, "it broke"),
    "retry_task": lambda wf: wf.retry_task(TASK, max_attempts=3),
}


def workflow_in(status: str, task_status: str) -> ResearchWorkflow:
    """A workflow in `status` with one task in `task_status`. The guards look only at the
    statuses, so both are set directly: the tables must agree with the aggregate even for
    pairs no real history reaches (a draft workflow with a running task)."""
    wf = ResearchWorkflow("wf-1")
    wf.apply(
        ev.WorkflowCreated("wf-1", "Sleep", "Does sleep help?", "exploratory", [], "normal", OWNER, None)
    )
    wf.apply(ev.TaskAdded(TASK, "Search", "literature_search", "a", None, []))
    wf.status = status
    wf.tasks[TASK].status = task_status
    wf.tasks[TASK].attempts = 1
    return wf


def accepted(
    calls: dict[str, Callable[[ResearchWorkflow], list[ev.DomainEvent]]], status: str, task_status: str
):
    """The actions the aggregate accepts; every refusal must be a status rule."""
    out = set()
    for action, call in calls.items():
        try:
            events = call(workflow_in(status, task_status))
        except DomainRuleViolation as exc:
            assert f"the workflow is {status};" in str(exc) or f"the task is {task_status};" in str(exc), (
                action,
                str(exc),
            )
        else:
            assert events, action
            out.add(action)
    return out


def test_every_action_of_the_tables_is_tried_here():
    assert set(WORKFLOW_CALLS) == set(get_args(WorkflowAction))
    assert set(TASK_CALLS) == set(get_args(TaskAction))


@pytest.mark.parametrize("task_status", TASK_STATUSES)
@pytest.mark.parametrize("status", WORKFLOW_STATUSES)
def test_allowed_actions_are_exactly_what_the_aggregate_accepts(status, task_status):
    assert accepted(WORKFLOW_CALLS, status, task_status) == allowed_actions(status)
    assert accepted(TASK_CALLS, status, task_status) == allowed_task_actions(status, task_status)


@pytest.mark.parametrize("status", sorted(TERMINAL_WORKFLOW_STATUSES))
def test_a_finished_workflow_allows_nothing(status):
    assert allowed_actions(status) == frozenset()
    assert all(allowed_task_actions(status, t) == frozenset() for t in TASK_STATUSES)


def test_a_workflow_that_does_not_exist_allows_nothing():
    assert allowed_actions(None) == frozenset()
    assert allowed_task_actions(None, "pending") == frozenset()


@pytest.mark.parametrize(
    ("actor", "role", "allowed"),
    [
        (OWNER, "researcher", True),
        ("sam", "researcher", False),
        ("sam", "admin", True),
        ("sam", "operator", False),
    ],
)
def test_only_the_owner_or_an_admin_may_change_a_workflow(actor, role, allowed):
    assert may_change(actor, role, OWNER) is allowed


def running_workflow_with(first_status: str) -> ResearchWorkflow:
    """A running workflow whose first task is in `first_status` and whose pending second task
    depends on it."""
    wf = workflow_in("running", first_status)
    wf.apply(ev.TaskAdded("t-2", "Analyse", "analysis", "a", None, [TASK]))
    return wf


@pytest.mark.parametrize("first_status", TASK_STATUSES)
def test_a_task_starts_exactly_when_no_dependency_is_unfinished(first_status):
    wf = running_workflow_with(first_status)
    waiting = unfinished_dependencies(wf.tasks["t-2"].depends_on, {TASK: first_status, "t-2": "pending"})
    try:
        wf.start_task("t-2")
    except DomainRuleViolation as exc:
        assert waiting == [TASK], str(exc)
        assert "are not completed" in str(exc)
    else:
        assert waiting == []
    assert (waiting == []) is (first_status == "completed")


def test_unfinished_dependencies_ignores_ids_it_has_no_status_for():
    assert unfinished_dependencies(["gone", TASK], {TASK: "running"}) == [TASK]


@pytest.mark.parametrize("attempts", [1, 2, 3, 4])
def test_a_failed_task_is_retried_exactly_when_it_has_attempts_left(attempts):
    wf = workflow_in("running", "failed")
    wf.tasks[TASK].attempts = attempts
    try:
        wf.retry_task(TASK, max_attempts=3)
    except DomainRuleViolation as exc:
        assert not may_retry(attempts, 3), str(exc)
    else:
        assert may_retry(attempts, 3)
    assert may_retry(attempts, 3) is (attempts < 3)


@pytest.mark.parametrize("task_status", TASK_STATUSES)
def test_a_new_task_may_depend_on_exactly_the_tasks_the_aggregate_accepts(task_status):
    wf = workflow_in("running", task_status)
    try:
        wf.add_task(
            task_id="t-new", name="New", kind="other", assignee="a", estimate_minutes=None, depends_on=[TASK]
        )
    except DomainRuleViolation as exc:
        assert not may_depend_on(task_status), str(exc)
    else:
        assert may_depend_on(task_status)
    assert may_depend_on(task_status) is (task_status != "cancelled")
