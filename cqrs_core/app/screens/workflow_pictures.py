"""Two pictures of one workflow for its detail page: its tasks as a dependency graph (coloured by
status, the critical path by estimates marked) and its tasks' start and finish as a timeline.

Both come from the rows the detail already read (`task_summary`: status, estimate, dependencies,
first start and latest outcome). Task names are people's text: in the graph every label goes
through `ui.dot_label` (one quoted DOT string, nothing interpreted), in the timeline through
`chart_label` (Vega-Lite draws text as text; control and bidirectional-override characters are
blanked so a name cannot reorder or break the labels around it)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.domain.task_graph import (
    CriticalPath,
    DependencyCycle,
    PlannedTask,
    critical_path,
    depth_and_breadth,
    levels,
)
from cqrs_core.domain.vocabulary import TASK_STATUSES

# Fill and outline per task status, the colours of `ui.status_badge` (the legend shows those badges).
STATUS_COLORS: dict[str, tuple[str, str]] = {
    "pending": ("#F1F3F4", "#80868B"),
    "running": ("#E3F2FD", "#1565C0"),
    "completed": ("#E6F4EA", "#2E7D32"),
    "failed": ("#FCE8E6", "#B3261E"),
    "cancelled": ("#F3E8FD", "#7B1FA2"),
}
CRITICAL_COLOR = "#E8710A"  # outline and arrows of the critical path (the legend's orange badge)
NAME_LIMIT = 40  # characters of a task name in a node or on the timeline's axis; longer ones end in …
LINE_WIDTH = 22  # a node's name is wrapped on two lines of about this many characters


def minutes_text(minutes: int) -> str:
    """An estimate in minutes as people read it: '45 min', '5.2 h', '2.1 days'."""
    return f"{minutes} min" if minutes < 90 else ui.duration(minutes * 60)


def _cut(name: str, limit: int = NAME_LIMIT) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


# ---------------------------------------------------------------- dependency graph


@dataclass(frozen=True, slots=True)
class TaskGraph:
    dot: str
    path: CriticalPath | None  # None: the dependencies go round in a circle
    direction: str  # "TB" or "LR"


def planned_tasks(tasks: Sequence[dict[str, Any]]) -> list[PlannedTask]:
    """The tasks that are still part of the plan, for the critical path: a cancelled task will
    not be done, so it takes no time."""
    return [
        PlannedTask(
            str(t["task_id"]), t.get("estimate_minutes"), tuple(str(d) for d in t.get("depends_on") or [])
        )
        for t in tasks
        if t["status"] != "cancelled"
    ]


def node_label(task: dict[str, Any]) -> str:
    """A node's label, already DOT-encoded: the name (cut, on up to two lines), then its status
    and estimate."""
    name = _cut(re.sub(r"\s+", " ", str(task["name"])).strip())
    lines = textwrap.wrap(name, LINE_WIDTH, max_lines=2, placeholder="…") or [""]
    estimate = task.get("estimate_minutes")
    facts = task["status"] + (f" · {minutes_text(estimate)}" if estimate else " · no estimate")
    return "\\n".join([*(ui.dot_label(line, NAME_LIMIT) for line in lines), facts])


def dependency_graph(tasks: Sequence[dict[str, Any]]) -> TaskGraph:
    """The tasks as a Graphviz digraph (dependency → dependant), each node filled with its
    status's colour, the critical path outlined and its arrows drawn thick. It runs along its
    longer side: top to bottom when the graph is deeper than it is wide, else left to right, so
    a long chain or many parallel tasks grow downwards, not past the page's width."""
    ids = {str(t["task_id"]): f"t{i}" for i, t in enumerate(tasks)}
    all_tasks = [
        PlannedTask(
            str(t["task_id"]), t.get("estimate_minutes"), tuple(str(d) for d in t.get("depends_on") or [])
        )
        for t in tasks
    ]
    try:
        path: CriticalPath | None = critical_path(planned_tasks(tasks))
        depth, breadth = depth_and_breadth(levels(all_tasks).values())
    except DependencyCycle:
        path, (depth, breadth) = None, (len(tasks), 1)
    direction = "LR" if breadth > depth else "TB"
    on_path = set(path.task_ids) if path else set()
    steps = set(zip(path.task_ids, path.task_ids[1:], strict=False)) if path else set()
    lines = [
        "digraph tasks {",
        f'graph [rankdir={direction}, nodesep=0.25, ranksep=0.35, bgcolor="transparent"];',
        'node [shape=box, style="rounded,filled", fontname="sans-serif", fontsize=11, '
        'fontcolor="#202124", margin="0.12,0.05", penwidth=1.2];',
        'edge [color="#9AA0A6", arrowsize=0.7];',
    ]
    for t in tasks:
        tid = str(t["task_id"])
        fill, outline = STATUS_COLORS.get(t["status"], STATUS_COLORS["pending"])
        critical = tid in on_path
        lines.append(
            f'"{ids[tid]}" [label="{node_label(t)}", tooltip="{ui.dot_label(t["name"], 200)}", '
            f'fillcolor="{fill}", color="{CRITICAL_COLOR if critical else outline}"'
            + (", penwidth=3" if critical else "")
            + "];"
        )
    for t in tasks:
        tid = str(t["task_id"])
        for dep in dict.fromkeys(str(d) for d in t.get("depends_on") or []):
            if dep in ids:
                style = f' [color="{CRITICAL_COLOR}", penwidth=2.5]' if (dep, tid) in steps else ""
                lines.append(f'"{ids[dep]}" -> "{ids[tid]}"{style};')
    lines.append("}")
    return TaskGraph("\n".join(lines), path, direction)


def graph_legend() -> str:
    return (
        "Status: "
        + " ".join(ui.status_badge(s) for s in TASK_STATUSES)
        + " · :orange-badge[thick orange outline and arrows] critical path"
    )


def path_caption(path: CriticalPath | None, tasks: Sequence[dict[str, Any]]) -> str:
    if path is None:
        return "The dependencies go round in a circle, so there is no critical path."
    if not path.task_ids:
        return "No task has an estimate, so there is no critical path: add estimates to see one."
    names = {str(t["task_id"]): t["name"] for t in tasks}
    chain = " → ".join(f"“{ui.md_escape(_cut(names[tid]))}”" for tid in path.task_ids)
    text = (
        f"Critical path by the estimates: {len(path.task_ids)} task(s), "
        f"{minutes_text(path.minutes)} in all: {chain}."
    )
    if path.unestimated:
        text += f" {path.unestimated} task(s) without an estimate count as 0 min."
    return text


def graph_section(tasks: Sequence[dict[str, Any]]) -> None:
    if not tasks:
        st.info("This workflow has no tasks, so there is no graph to draw.", icon=":material/account_tree:")
        return
    graph = dependency_graph(tasks)
    st.markdown(graph_legend())
    st.graphviz_chart(graph.dot)
    st.caption(path_caption(graph.path, tasks))


# ---------------------------------------------------------------- timeline

_HIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def chart_label(text: Any, limit: int = NAME_LIMIT) -> str:
    """`text` for a Vega-Lite label (an axis value, a tooltip): control characters and
    bidirectional marks, embeddings, overrides and isolates become spaces (an override would
    reverse the text drawn after it), then it is cut to `limit` characters, ending in … when cut.
    Vega-Lite draws labels as text, so nothing else needs encoding."""
    return _cut(_HIDDEN.sub(" ", str(text)), limit)


def viewer_zone() -> tuple[tzinfo, str]:
    """The viewer's time zone as the browser reports it, and its name; UTC when the browser
    says nothing or names a zone this machine does not know."""
    name = ui.viewer_zone_name()
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError):
        return UTC, "UTC"


def _wall_ms(moment: datetime, zone: tzinfo) -> int:
    """Milliseconds of `moment`'s wall-clock time in `zone`, counted as if it were UTC: the chart
    uses a UTC scale, so it shows exactly that wall clock whatever zone the browser is in."""
    wall = moment.astimezone(zone).replace(tzinfo=UTC)
    return int(wall.timestamp() * 1000)


def timeline_rows(tasks: Sequence[dict[str, Any]], now: datetime, zone: tzinfo) -> tuple[pd.DataFrame, int]:
    """One bar per task that has started, from its first start to its latest outcome (a task
    still running or waiting for a retry's outcome runs to `now`), ordered by start; and how
    many tasks never started (not drawn). Bars are labelled with the task's number in the task
    list and its name, so two tasks of the same name keep a bar each."""
    rows = []
    for number, t in enumerate(tasks, start=1):
        start = t.get("started_at")
        if start is None:
            continue
        end = t.get("finished_at")
        rows.append(
            {
                "task": f"{number}. {chart_label(t['name'])}",
                "status": t["status"],
                "start": _wall_ms(start, zone),
                "end": _wall_ms(end or now, zone),
                "from": start.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
                "until": end.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if end else "now (still open)",
                "took": ui.duration(((end or now) - start).total_seconds()),
                "order": (start, number),
            }
        )
    rows.sort(key=lambda r: r["order"])
    columns = ["task", "status", "start", "end", "from", "until", "took"]
    table = pd.DataFrame([{k: r[k] for k in columns} for r in rows], columns=columns)
    return table, len(tasks) - len(rows)


def timeline_spec(zone_name: str, shown: Sequence[str], now_ms: int | None = None) -> dict[str, Any]:
    """A Gantt-style Vega-Lite spec (data columns as `timeline_rows` makes them): a bar per task
    on a UTC time scale holding the viewer's wall clock, coloured by status; a dashed rule at
    now when a bar runs to now."""
    when = f"time ({zone_name})"
    statuses = list(STATUS_COLORS)
    shown = [s for s in statuses if s in shown]
    bars: dict[str, Any] = {
        "mark": {"type": "bar", "cornerRadius": 3, "height": {"band": 0.7}},
        "encoding": {
            "y": {
                "field": "task",
                "type": "nominal",
                "sort": None,
                "title": None,
                "axis": {"labelLimit": 200},
            },
            "x": {
                "field": "start",
                "type": "temporal",
                "title": when,
                "scale": {"type": "utc"},
                # day and time on every label: a timeline often spans days
                "axis": {"format": "%d %b %H:%M", "labelOverlap": True, "labelFlush": True, "tickCount": 6},
            },
            "x2": {"field": "end"},
            "color": {
                "field": "status",
                "type": "nominal",
                "title": "status",
                "scale": {"domain": statuses, "range": [STATUS_COLORS[s][1] for s in statuses]},
                # only the statuses drawn, wrapped in rows, so the legend fits a narrow page
                "legend": {"orient": "bottom", "direction": "horizontal", "columns": 3, "values": shown},
            },
            "tooltip": [
                {"field": "task", "type": "nominal", "title": "task"},
                {"field": "status", "type": "nominal", "title": "status"},
                {"field": "from", "type": "nominal", "title": f"started ({zone_name})"},
                {"field": "until", "type": "nominal", "title": f"finished ({zone_name})"},
                {"field": "took", "type": "nominal", "title": "took"},
            ],
        },
    }
    layers = [bars]
    if now_ms is not None:
        layers.append(
            {
                "mark": {"type": "rule", "strokeDash": [4, 3], "color": "#5F6368"},
                "encoding": {"x": {"datum": now_ms, "type": "temporal", "scale": {"type": "utc"}}},
            }
        )
    return {"height": {"step": 24}, "layer": layers}


def timeline_section(wf: dict[str, Any], tasks: Sequence[dict[str, Any]]) -> None:
    if wf.get("started_at") is None:
        st.info("The timeline starts when the workflow starts.", icon=":material/timeline:")
        return
    zone, zone_name = viewer_zone()
    now = datetime.now(UTC)
    table, not_started = timeline_rows(tasks, now, zone)
    unstarted = f"{not_started} task(s) never started and are not drawn." if not_started else ""
    if table.empty:
        st.info(f"No task has started yet. {unstarted}".strip(), icon=":material/timeline:")
        return
    ongoing = (table["until"] == "now (still open)").any()
    st.vega_lite_chart(
        table,
        timeline_spec(zone_name, list(table["status"].unique()), _wall_ms(now, zone) if ongoing else None),
        key="wf_timeline",
    )
    zone_note = (
        "Times in UTC (your browser did not say its time zone)."
        if zone_name == "UTC" and not st.context.timezone
        else f"Times in {zone_name}, your browser's time zone."
    )
    open_note = " Open tasks run to now (the dashed line)." if ongoing else ""
    st.caption(f"{zone_note}{open_note} {unstarted}".strip())


def show(wf: dict[str, Any], tasks: Sequence[dict[str, Any]]) -> None:
    """The detail page's pictures section: the dependency graph and the timeline, one tab each."""
    st.subheader("Dependencies and timeline", anchor=False)
    graph_view, timeline_view = st.tabs(["Dependency graph", "Timeline"], key="wf_pictures_tabs")
    with graph_view:
        graph_section(tasks)
    with timeline_view:
        timeline_section(wf, tasks)
