"""A workflow's tasks as a dependency graph: its critical path by the tasks' estimates, and how
deep and how wide the graph is (the detail page draws it along its longer side).

Pure functions over plain values (ids, estimates, dependencies), no I/O. Tasks come in the order
they were added, which the domain guarantees is a topological order (a new task can only depend
on tasks that exist); these functions do not rely on it, but use it to break ties."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlannedTask:
    task_id: str
    estimate_minutes: int | None
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CriticalPath:
    """The chain of dependent tasks with the largest total estimate, first task first.
    `minutes` is that total; `unestimated` counts the tasks without an estimate, which count as
    0 minutes. No estimate at all gives no path (`task_ids` empty): there is nothing to measure."""

    task_ids: tuple[str, ...]
    minutes: int
    unestimated: int


class DependencyCycle(ValueError):
    """The dependencies go round in a circle (the domain never records one)."""


def _order(tasks: Sequence[PlannedTask]) -> tuple[list[PlannedTask], dict[str, list[str]]]:
    """The tasks in a topological order (dependencies first; ties in the order given) and each
    task's dependencies among `tasks` (a dependency on a task not given is left out)."""
    known = {t.task_id for t in tasks}
    deps = {t.task_id: [d for d in dict.fromkeys(t.depends_on) if d in known] for t in tasks}
    done: set[str] = set()
    ordered: list[PlannedTask] = []
    remaining = list(tasks)
    while remaining:
        ready = [t for t in remaining if all(d in done for d in deps[t.task_id])]
        if not ready:
            raise DependencyCycle(
                f"The dependencies of {len(remaining)} task(s) go round in a circle; "
                "they have no critical path."
            )
        for t in ready:
            done.add(t.task_id)
        ordered.extend(ready)
        remaining = [t for t in remaining if t.task_id not in done]
    return ordered, deps


def critical_path(tasks: Sequence[PlannedTask]) -> CriticalPath:
    """The longest path through the dependency DAG, where a path's length is the sum of its
    tasks' estimates (a task without one counts 0). Of equally long paths, the one whose last
    task comes first in `tasks` wins, and each step back takes the first-listed of equally long
    predecessors; so the answer never depends on anything but the tasks. Raises
    `DependencyCycle` when the dependencies are not a DAG."""
    unestimated = sum(1 for t in tasks if t.estimate_minutes is None)
    if unestimated == len(tasks):
        return CriticalPath((), 0, unestimated)
    ordered, deps = _order(tasks)
    rank = {t.task_id: i for i, t in enumerate(tasks)}
    finish: dict[str, int] = {}
    previous: dict[str, str | None] = {}
    for t in ordered:
        before = min(deps[t.task_id], key=lambda d: (-finish[d], rank[d]), default=None)
        previous[t.task_id] = before
        finish[t.task_id] = (finish[before] if before else 0) + (t.estimate_minutes or 0)
    last: str | None = min(finish, key=lambda k: (-finish[k], rank[k]))
    minutes = finish[last] if last else 0
    chain: list[str] = []
    while last is not None:
        chain.append(last)
        last = previous[last]
    return CriticalPath(tuple(reversed(chain)), minutes, unestimated)


def levels(tasks: Sequence[PlannedTask]) -> dict[str, int]:
    """Each task's level: 0 for a task that depends on nothing, else one more than its deepest
    dependency (the rank Graphviz puts it on). Raises `DependencyCycle` when there is a cycle."""
    ordered, deps = _order(tasks)
    level: dict[str, int] = {}
    for t in ordered:
        level[t.task_id] = 1 + max((level[d] for d in deps[t.task_id]), default=-1)
    return level


def depth_and_breadth(level_of: Iterable[int]) -> tuple[int, int]:
    """How many levels the graph has, and the most tasks on one level."""
    counts: dict[int, int] = {}
    for lv in level_of:
        counts[lv] = counts.get(lv, 0) + 1
    return len(counts), max(counts.values(), default=0)
