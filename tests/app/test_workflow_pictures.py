"""The detail page's pictures: the dependency graph (status colours, critical path, legend) and
the timeline (bars from first start to latest outcome, open ones to now, in the viewer's time
zone), their empty states, and hostile task names through the DOT and Vega-Lite labels."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import json
import re
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dot_reader import dot_statements
from page_harness import (  # noqa: F401
    APP,
    HOSTILE_INPUTS,
    app_env,
    catch_up,
    create_workflow,
    rerun,
    service,
    texts,
)
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from cqrs_core import CommandFactory
from cqrs_core.app.screens.workflow_pictures import (
    CRITICAL_COLOR,
    STATUS_COLORS,
    chart_label,
    dependency_graph,
    path_caption,
    timeline_rows,
)
from cqrs_core.read.queries import QueryFactory

PAGE = "pages/workflows.py"
ADMIN = CommandFactory(actor="admin")
BERLIN = ZoneInfo("Europe/Berlin")


# ---------------------------------------------------------------- reading what the page drew


def unquote(token: str) -> str:
    """What Graphviz shows for a quoted token: its escapes undone as a label's are (`\\\\` and
    `\\"` the character, `\\n`, `\\l` and `\\r` a line break; any other backslash stays)."""
    assert token[0] == token[-1] == '"'
    return re.sub(r'\\([\\"nlr])', lambda m: "\n" if m[1] in "nlr" else m[1], token[1:-1])


def nodes(source: str) -> dict[str, dict[str, str]]:
    """Each node's attributes, by node id."""
    found = {}
    for s in dot_statements(source, "tasks"):
        if len(s) > 2 and s[0].startswith('"t') and s[1] == "[":
            attrs = s[2:-1]
            pairs = [attrs[k : k + 3] for k in range(0, len(attrs), 4)]  # name = value ,
            found[unquote(s[0])] = {p[0]: unquote(p[2]) if p[2].startswith('"') else p[2] for p in pairs}
    return found


def edges(source: str) -> dict[tuple[str, str], list[str]]:
    return {
        (unquote(s[0]), unquote(s[2])): s[3:]
        for s in dot_statements(source, "tasks")
        if len(s) > 2 and s[1] == "->"
    }


def open_detail(wid: str, timezone: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    if timezone:
        at.context["timezone"] = timezone
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page(PAGE)
    at.query_params["workflow"] = wid
    return rerun(at)


def graph_source(at: AppTest) -> str:
    (chart,) = at.get("graphviz_chart")
    return chart.proto.spec


def timeline_chart(at: AppTest):
    (chart,) = at.get("vega_lite_chart")
    return json.loads(chart.proto.spec), convert_arrow_bytes_to_pandas_df(chart.proto.data.data)


def at_time(base: datetime, minutes: int) -> dict:
    return {"occurred_at": base + timedelta(minutes=minutes)}


# ---------------------------------------------------------------- the pure parts


def row(name, status="pending", estimate=None, depends_on=(), started=None, finished=None, task_id=None):
    return {
        "task_id": task_id or name,
        "name": name,
        "status": status,
        "estimate_minutes": estimate,
        "depends_on": list(depends_on),
        "started_at": started,
        "finished_at": finished,
    }


def test_graph_runs_along_its_longer_side_so_fifty_tasks_stay_readable():
    chain = [row("t0", estimate=5)] + [
        row(f"t{i}", estimate=5, depends_on=[f"t{i - 1}"]) for i in range(1, 50)
    ]
    graph = dependency_graph(chain)
    assert graph.direction == "TB"  # 50 levels of one task: grows downwards
    assert len(nodes(graph.dot)) == 50 and len(edges(graph.dot)) == 49
    assert graph.path is not None and graph.path.minutes == 250
    fan = [row("root", estimate=1)] + [row(f"t{i}", estimate=1, depends_on=["root"]) for i in range(49)]
    graph = dependency_graph(fan)
    assert graph.direction == "LR"  # 49 tasks side by side: stacked downwards
    assert "rankdir=LR" in graph.dot
    # every node's name fits on two short lines, so a node stays narrow
    long = dependency_graph([row("word " * 30, estimate=3)])
    (label,) = [n["label"] for n in nodes(long.dot).values()]
    name_lines = label.split("\n")[:-1]
    assert len(name_lines) == 2 and all(len(line) <= 22 for line in name_lines)
    assert name_lines[-1].endswith("…") and label.endswith("pending · 3 min")


def test_cancelled_tasks_are_drawn_but_take_no_time_on_the_critical_path():
    tasks = [
        row("a", "completed", 10),
        row("b", "cancelled", 90, ["a"]),
        row("c", "pending", 20, ["a"]),
    ]
    graph = dependency_graph(tasks)
    assert graph.path is not None and graph.path.task_ids == ("a", "c")
    drawn = nodes(graph.dot)
    assert drawn["t1"]["fillcolor"] == STATUS_COLORS["cancelled"][0]
    assert drawn["t1"]["color"] == STATUS_COLORS["cancelled"][1]
    assert drawn["t0"]["color"] == drawn["t2"]["color"] == CRITICAL_COLOR


def test_a_dependency_cycle_is_still_drawn_without_a_critical_path():
    graph = dependency_graph([row("a", estimate=1, depends_on=["b"]), row("b", estimate=1, depends_on=["a"])])
    assert graph.path is None
    assert len(nodes(graph.dot)) == 2 and set(edges(graph.dot)) == {("t1", "t0"), ("t0", "t1")}
    assert CRITICAL_COLOR not in graph.dot
    assert path_caption(None, []) == "The dependencies go round in a circle, so there is no critical path."


def test_timeline_rows_run_from_first_start_to_latest_outcome_in_the_viewer_zone():
    base = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # Berlin moves to summer time at 01:00 UTC
    now = base + timedelta(hours=3)
    tasks = [
        row("late", "completed", started=base + timedelta(hours=1), finished=base + timedelta(hours=2)),
        row("never"),
        row("open", "running", started=base),
        row(
            "late", "failed", started=base + timedelta(hours=1), finished=base + timedelta(hours=1, minutes=5)
        ),
    ]
    table, not_started = timeline_rows(tasks, now, BERLIN)
    assert not_started == 1
    assert list(table["task"]) == ["3. open", "1. late", "4. late"]  # by start; same names keep a bar each
    ms = {
        t: int(datetime(2026, 3, 29, *hm, tzinfo=UTC).timestamp() * 1000)
        for t, hm in {
            "01:30": (1, 30),
            "04:30": (4, 30),
            "03:30": (3, 30),
            "03:35": (3, 35),
            "05:30": (5, 30),
        }.items()
    }
    # the viewer's wall clock (CET before 01:00 UTC, CEST after) on a UTC scale
    assert list(table["start"]) == [ms["01:30"], ms["03:30"], ms["03:30"]]
    assert list(table["end"]) == [ms["05:30"], ms["04:30"], ms["03:35"]]  # the open one runs to now
    assert list(table["until"]) == ["now (still open)", "2026-03-29 04:30:00", "2026-03-29 03:35:00"]
    assert list(table["took"]) == ["3.0 h", "60 min", "5 min"]


def test_chart_labels_blank_controls_and_direction_overrides_and_cut_long_names():
    assert chart_label("a\tb\nc\u202ed\u2066e\x85f") == "a b c d e f"
    assert chart_label("x" * 41) == "x" * 39 + "…"
    assert chart_label("x" * 40) == "x" * 40


# ---------------------------------------------------------------- the page


def plant_diamond(svc) -> tuple[str, dict[str, str], datetime]:
    """A running workflow whose diamond of tasks is completed, failed, running and pending,
    with its times back-dated (a trusted import) to known minutes."""
    base = (datetime.now(UTC) - timedelta(hours=5)).replace(second=0, microsecond=0)
    ids = {name: str(uuid.uuid4()) for name in ("Search", "Screen", "Extract", "Synthesis")}
    spec = [
        ("Search", 30, []),
        ("Screen", 60, ["Search"]),
        ("Extract", 240, ["Search"]),
        ("Synthesis", 45, ["Screen", "Extract"]),
    ]
    wid = str(uuid.uuid4())
    run = lambda cmd: svc.execute_command(cmd, trusted_import=True)  # noqa: E731
    run(
        ADMIN.create_research_workflow(
            workflow_id=wid,
            title="Diamond",
            research_question="Which branch is longer?",
            methodology="systematic_review",
            tasks=[
                {
                    "task_id": ids[n],
                    "name": n,
                    "kind": "analysis",
                    "assignee": "admin",
                    "estimate_minutes": est,
                    "depends_on": [ids[d] for d in deps],
                }
                for n, est, deps in spec
            ],
            **at_time(base, 0),
        )
    )
    run(ADMIN.start_workflow(workflow_id=wid, **at_time(base, 1)))
    run(ADMIN.start_task(workflow_id=wid, task_id=ids["Search"], **at_time(base, 10)))
    run(ADMIN.complete_task(workflow_id=wid, task_id=ids["Search"], result_summary="ok", **at_time(base, 40)))
    run(ADMIN.start_task(workflow_id=wid, task_id=ids["Screen"], **at_time(base, 50)))
    run(ADMIN.fail_task(workflow_id=wid, task_id=ids["Screen"], error="bad", **at_time(base, 70)))
    run(ADMIN.start_task(workflow_id=wid, task_id=ids["Extract"], **at_time(base, 60)))
    catch_up(svc)
    return wid, ids, base


def test_the_detail_draws_the_graph_with_statuses_critical_path_and_legend(db_url, app_env, service):
    wid, ids, _ = plant_diamond(service)
    app_env(db_url)

    at = open_detail(wid)

    assert "Dependencies and timeline" in [s.value for s in at.subheader]
    source = graph_source(at)
    drawn = nodes(source)
    by_name = {n["label"].split("\n")[0]: n for n in drawn.values()}
    assert set(by_name) == {"Search", "Screen", "Extract", "Synthesis"}
    for name, status in [
        ("Search", "completed"),
        ("Screen", "failed"),
        ("Extract", "running"),
        ("Synthesis", "pending"),
    ]:
        assert by_name[name]["fillcolor"] == STATUS_COLORS[status][0]
        assert by_name[name]["label"].split("\n")[1].startswith(status)
    # the longer branch, Search (30) → Extract (240) → Synthesis (45), is the critical path
    critical = {name for name, n in by_name.items() if n["color"] == CRITICAL_COLOR}
    assert critical == {"Search", "Extract", "Synthesis"}
    assert by_name["Screen"]["color"] == STATUS_COLORS["failed"][1]
    node_of = {name: node for node, n in drawn.items() for name in [n["label"].split("\n")[0]]}
    drawn_edges = edges(source)
    assert set(drawn_edges) == {
        (node_of["Search"], node_of["Screen"]),
        (node_of["Search"], node_of["Extract"]),
        (node_of["Screen"], node_of["Synthesis"]),
        (node_of["Extract"], node_of["Synthesis"]),
    }
    assert CRITICAL_COLOR.join('""') in drawn_edges[(node_of["Extract"], node_of["Synthesis"])]
    assert drawn_edges[(node_of["Screen"], node_of["Synthesis"])] == []
    page = texts(at)
    assert "critical path" in page and ":green-badge[completed]" in page  # the legend
    assert (
        "Critical path by the estimates: 3 task(s), 5.2 h in all: “Search” → “Extract” → “Synthesis”." in page
    )


def test_the_timeline_draws_started_tasks_in_the_viewer_zone_and_counts_the_others(db_url, app_env, service):
    wid, ids, base = plant_diamond(service)
    app_env(db_url)

    at = open_detail(wid, timezone="Europe/Berlin")

    spec, data = timeline_chart(at)
    assert spec["layer"][0]["encoding"]["x"]["title"] == "time (Europe/Berlin)"
    assert spec["layer"][0]["encoding"]["x"]["scale"] == {"type": "utc"}
    assert "data" not in spec and "datasets" not in spec
    # by start (Synthesis never started), numbered as in the task table
    number = {
        t["name"]: n for n, t in enumerate(service.execute_query(QueryFactory().get_workflow(wid)).tasks, 1)
    }
    assert list(data["task"]) == [f"{number[n]}. {n}" for n in ("Search", "Screen", "Extract")]
    wall = lambda minutes: int(  # noqa: E731
        (base + timedelta(minutes=minutes)).astimezone(BERLIN).replace(tzinfo=UTC).timestamp() * 1000
    )
    assert list(data["start"]) == [wall(10), wall(50), wall(60)]
    assert list(data["end"])[:2] == [wall(40), wall(70)]
    now = datetime.now(UTC).astimezone(BERLIN).replace(tzinfo=UTC).timestamp() * 1000
    assert abs(data["end"][2] - now) < 120_000  # the running task runs to now
    assert list(data["status"]) == ["completed", "failed", "running"]
    assert spec["layer"][1]["mark"]["type"] == "rule"  # the dashed line at now
    assert spec["layer"][0]["encoding"]["color"]["legend"]["values"] == ["running", "completed", "failed"]
    caption = texts(at)
    assert "Times in Europe/Berlin, your browser's time zone." in caption
    assert "1 task(s) never started and are not drawn." in caption

    # without a time zone from the browser, UTC, and it says so
    at = open_detail(wid)
    spec, data = timeline_chart(at)
    assert spec["layer"][0]["encoding"]["x"]["title"] == "time (UTC)"
    assert data["start"][0] == int((base + timedelta(minutes=10)).timestamp() * 1000)
    assert "Times in UTC (your browser did not say its time zone)." in texts(at)


def test_empty_states_of_both_pictures(db_url, app_env, service):
    empty = create_workflow(service, actor="admin", title="Empty")
    planned = create_workflow(
        service,
        actor="admin",
        title="Planned",
        tasks=[{"name": "One"}, {"name": "Two", "depends_on": ["One"]}],
    )
    service.execute_command(ADMIN.start_workflow(workflow_id=planned))
    catch_up(service)
    app_env(db_url)

    at = open_detail(empty)
    assert not at.get("graphviz_chart") and not at.get("vega_lite_chart")
    info = [i.value for i in at.info]
    assert "This workflow has no tasks, so there is no graph to draw." in info
    assert "The timeline starts when the workflow starts." in info

    at = open_detail(planned)
    assert len(nodes(graph_source(at))) == 2
    assert not at.get("vega_lite_chart")
    assert "No task has started yet. 2 task(s) never started and are not drawn." in [i.value for i in at.info]
    assert "No task has an estimate, so there is no critical path: add estimates to see one." in texts(at)
    assert CRITICAL_COLOR not in graph_source(at)


HOSTILE = [s for s in HOSTILE_INPUTS if s.strip() and "\x00" not in s and len(s) <= 200]


def test_hostile_task_names_reach_the_graph_and_timeline_as_plain_labels(db_url, app_env, service):
    assert len(HOSTILE) > 50
    ids = [str(uuid.uuid4()) for _ in HOSTILE]
    wid = str(uuid.uuid4())
    service.execute_command(
        ADMIN.create_research_workflow(
            workflow_id=wid,
            title="Hostile names",
            research_question="Do the pictures hold?",
            methodology="exploratory",
            tasks=[
                {
                    "task_id": ids[i],
                    "name": name,
                    "assignee": "admin",
                    "estimate_minutes": i + 1,
                    "depends_on": [ids[0]] if i else [],
                }
                for i, name in enumerate(HOSTILE)
            ],
        )
    )
    service.execute_command(ADMIN.start_workflow(workflow_id=wid))
    service.execute_command(ADMIN.start_task(workflow_id=wid, task_id=ids[0]))
    service.execute_command(ADMIN.complete_task(workflow_id=wid, task_id=ids[0], result_summary="done"))
    for tid in ids[1::2]:
        service.execute_command(ADMIN.start_task(workflow_id=wid, task_id=tid))
    catch_up(service)
    stored = service.execute_query(QueryFactory().get_workflow(wid)).tasks
    names = {str(t["task_id"]): t["name"] for t in stored}
    node = {str(t["task_id"]): f"t{i}" for i, t in enumerate(stored)}  # nodes in the task table's order
    app_env(db_url)

    at = open_detail(wid, timezone="America/New_York")

    # the DOT source lexes into one node per task and one edge per dependency, and each label reads
    # back as the name as stored (whitespace runs as one space, cut and wrapped), its status and estimate
    source = graph_source(at)
    drawn = nodes(source)
    assert len(drawn) == len(HOSTILE)
    assert len(edges(source)) == len(HOSTILE) - 1
    for tid in ids:
        *name_lines, facts = drawn[node[tid]]["label"].split("\n")
        plain = re.sub(r"\s+", " ", names[tid]).strip()
        cut = plain if len(plain) <= 40 else plain[:39] + "…"
        expected = [
            re.sub(r"[\x00-\x1f\x7f]", " ", line) + (" " if line.endswith("\\") else "")
            for line in textwrap.wrap(cut, 22, max_lines=2, placeholder="…") or [""]
        ]
        assert name_lines == expected, (names[tid], name_lines)
        assert re.fullmatch(r"(completed|running|pending) · \d+ min", facts), facts
        tooltip = re.sub(r"[\x00-\x1f\x7f]", " ", names[tid])[:200]
        assert drawn[node[tid]]["tooltip"] == tooltip + (" " if tooltip.endswith("\\") else "")
    # the longest branch: the first task, then the last (largest estimate)
    critical = {node for node, n in drawn.items() if n["color"] == CRITICAL_COLOR}
    assert critical == {node[ids[0]], node[ids[-1]]}

    # the timeline's labels are the names, numbered, with no control or direction character left
    spec, data = timeline_chart(at)
    number = {tid: int(n[1:]) + 1 for tid, n in node.items()}
    started = [ids[0], *ids[1::2]]
    assert sorted(data["task"]) == sorted(f"{number[tid]}. {chart_label(names[tid])}" for tid in started)
    assert not data["task"].str.contains(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069]").any()
    assert data["task"].is_unique
    # no name is part of the spec: they reach the chart only as data values, drawn as text
    assert not any(name in json.dumps(spec) for name in names.values() if len(name) > 3)
    assert "Times in America/New_York, your browser's time zone." in texts(at)


@pytest.mark.parametrize("zone", ["Not/AZone", "../../etc/passwd"])
def test_a_time_zone_the_machine_does_not_know_falls_back_to_utc(db_url, app_env, service, zone):
    wid, _, _ = plant_diamond(service)
    app_env(db_url)

    at = open_detail(wid, timezone=zone)

    spec, _ = timeline_chart(at)
    assert spec["layer"][0]["encoding"]["x"]["title"] == "time (UTC)"
    assert "Times in UTC" in texts(at)
