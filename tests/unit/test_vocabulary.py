"""The domain's words live in `cqrs_core.domain.vocabulary`; data keyed by those words elsewhere
(the workload generator's weights and texts) covers exactly them, so adding a
word without its data fails here rather than in a demo."""

from __future__ import annotations

from cqrs_core.app.auth import User
from cqrs_core.domain.vocabulary import (
    METHODOLOGIES,
    OPEN_TASK_STATUSES,
    OPEN_WORKFLOW_STATUSES,
    PRIORITIES,
    PRIORITY_RANK,
    ROLES,
    TASK_KINDS,
    TASK_STATUSES,
    TERMINAL_WORKFLOW_STATUSES,
    WORKFLOW_STATUSES,
    role_holds,
)
from cqrs_core.tools.workload import vocabulary as workload_vocabulary


def test_workflow_statuses_are_open_or_terminal():
    assert OPEN_WORKFLOW_STATUSES | TERMINAL_WORKFLOW_STATUSES == set(WORKFLOW_STATUSES)
    assert not OPEN_WORKFLOW_STATUSES & TERMINAL_WORKFLOW_STATUSES
    assert OPEN_TASK_STATUSES < set(TASK_STATUSES)


def test_priorities_rank_lowest_first():
    assert sorted(PRIORITIES, key=PRIORITY_RANK.__getitem__) == ["low", "normal", "high", "urgent"]


def test_the_workload_generator_has_data_for_every_word():
    assert set(workload_vocabulary.TITLES) == set(workload_vocabulary.QUESTIONS) == set(METHODOLOGIES)
    assert set(workload_vocabulary.METHODOLOGY_WEIGHTS) == set(METHODOLOGIES)
    assert set(workload_vocabulary.PRIORITY_WEIGHTS) == set(PRIORITIES)
    for per_kind in (
        workload_vocabulary.TASK_NAMES,
        workload_vocabulary.TASK_AGENTS,
        workload_vocabulary.ESTIMATES,
        workload_vocabulary.TASK_ERRORS,
        workload_vocabulary.RESULTS,
    ):
        assert set(per_kind) == set(TASK_KINDS)
    assert workload_vocabulary.STAGES == (
        "literature_search",
        "data_collection",
        "analysis",
        "synthesis",
        "review",
    )
    assert set(workload_vocabulary.FINAL_STATUS.values()) <= set(WORKFLOW_STATUSES)


def test_an_admin_holds_every_role_and_everyone_holds_analyst():
    for role in ROLES:
        assert role_holds(role, role) and role_holds(role, "analyst") and role_holds("admin", role)
        assert User("u", role).can("researcher") is (role in ("researcher", "admin"))
    assert not role_holds("analyst", "researcher") and not role_holds("researcher", "operator")
