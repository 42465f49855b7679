"""The critical path of a workflow's tasks by their estimates, and the graph's depth and breadth."""

import pytest

from cqrs_core.domain.task_graph import (
    CriticalPath,
    DependencyCycle,
    PlannedTask,
    critical_path,
    depth_and_breadth,
    levels,
)


def task(task_id: str, estimate: int | None, *depends_on: str) -> PlannedTask:
    return PlannedTask(task_id, estimate, tuple(depends_on))


def test_a_single_task_is_its_own_critical_path():
    assert critical_path([task("a", 30)]) == CriticalPath(("a",), 30, 0)


def test_no_task_at_all_has_no_path():
    assert critical_path([]) == CriticalPath((), 0, 0)


def test_without_any_estimate_there_is_no_critical_path():
    tasks = [task("a", None), task("b", None, "a"), task("c", None, "b")]
    assert critical_path(tasks) == CriticalPath((), 0, 3)


def test_a_missing_estimate_counts_as_zero_minutes_and_is_counted():
    tasks = [task("a", 10), task("b", None, "a"), task("c", 5, "b"), task("d", 12)]
    assert critical_path(tasks) == CriticalPath(("a", "b", "c"), 15, 1)


def test_a_diamond_takes_its_longer_branch():
    #   a(10) → b(5)  → d(1)
    #   a(10) → c(20) → d(1)
    tasks = [task("a", 10), task("b", 5, "a"), task("c", 20, "a"), task("d", 1, "b", "c")]
    assert critical_path(tasks) == CriticalPath(("a", "c", "d"), 31, 0)
    # the same diamond with the long branch listed first
    tasks = [task("a", 10), task("c", 20, "a"), task("b", 5, "a"), task("d", 1, "b", "c")]
    assert critical_path(tasks).task_ids == ("a", "c", "d")


def test_ties_go_to_the_task_listed_first_at_every_step():
    # two equally long branches of a diamond: the first-listed predecessor wins
    tasks = [task("a", 10), task("b", 7, "a"), task("c", 7, "a"), task("d", 1, "c", "b")]
    assert critical_path(tasks) == CriticalPath(("a", "b", "d"), 18, 0)
    # two separate chains of 20 minutes: the one whose last task is listed first
    tasks = [task("x", 5), task("y", 15, "x"), task("p", 10), task("q", 10, "p")]
    assert critical_path(tasks).task_ids == ("x", "y")
    tasks = [task("p", 10), task("q", 10, "p"), task("x", 5), task("y", 15, "x")]
    assert critical_path(tasks).task_ids == ("p", "q")
    # a zero-minute task at the end does not lengthen the path, so the path stops before it
    tasks = [task("a", 10), task("b", None, "a")]
    assert critical_path(tasks) == CriticalPath(("a",), 10, 1)


def test_the_order_given_need_not_be_topological_and_unknown_dependencies_are_ignored():
    tasks = [task("c", 1, "b", "gone"), task("b", 2, "a"), task("a", 3)]
    assert critical_path(tasks) == CriticalPath(("a", "b", "c"), 6, 0)


def test_a_cycle_is_refused_in_one_sentence():
    with pytest.raises(DependencyCycle, match="2 task\\(s\\) go round in a circle"):
        critical_path([task("a", 1, "b"), task("b", 1, "a"), task("c", 1)])
    with pytest.raises(DependencyCycle):
        levels([task("a", 1, "a")])


def test_levels_depth_and_breadth():
    tasks = [task("a", 1), task("b", 1, "a"), task("c", 1, "a"), task("d", 1, "b", "c"), task("e", 1)]
    level = levels(tasks)
    assert level == {"a": 0, "e": 0, "b": 1, "c": 1, "d": 2}
    assert depth_and_breadth(level.values()) == (3, 2)
    assert depth_and_breadth([]) == (0, 0)


def test_fifty_tasks_in_a_chain_and_fifty_in_parallel():
    chain = [task("t0", 1)] + [task(f"t{i}", 1, f"t{i - 1}") for i in range(1, 50)]
    assert critical_path(chain).minutes == 50
    assert depth_and_breadth(levels(chain).values()) == (50, 1)
    fan = [task("root", 1)] + [task(f"t{i}", i, "root") for i in range(49)]
    assert critical_path(fan) == CriticalPath(("root", "t48"), 49, 0)
    assert depth_and_breadth(levels(fan).values()) == (2, 49)
