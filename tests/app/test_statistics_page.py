"""Statistics: charts from the views after a refresh, their freshness, the date range, CSV
downloads; the refresh is an operator action."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import base64
import csv
import io
import json
import uuid
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from page_harness import (  # noqa: F401
    HOSTILE_INPUTS,
    app_env,
    bcrypt_hash,
    create_workflow,
    rerun,
    run_page,
    seed,
    service,
    sign_in,
    texts,
)
from streamlit.runtime.media_file_manager import MediaFileManager

from cqrs_core import CommandFactory
from cqrs_core.app.ui import csv_safe, plotly_escape
from cqrs_core.infra.errors import AuthorizationError

PAGE = "pages/statistics.py"


def plant(svc) -> None:
    alice = CommandFactory(actor="alice")
    for i, outcome in enumerate(["completed", "completed", "failed", "cancelled", "running"]):
        search, review = str(uuid.uuid4()), str(uuid.uuid4())
        wid = create_workflow(
            svc,
            title=f"Study {i}",
            methodology="meta_analysis" if i % 2 else "case_study",
            tasks=[
                {"name": "Search", "task_id": search, "kind": "literature_search", "assignee": "bob"},
                {"name": "Review", "task_id": review, "kind": "review", "assignee": "carol"},
            ],
        )
        if outcome == "cancelled":
            svc.execute_command(alice.cancel_workflow(workflow_id=wid, reason="no funding"))
            continue
        svc.execute_command(alice.start_workflow(workflow_id=wid))
        svc.execute_command(alice.start_task(workflow_id=wid, task_id=search))
        if outcome == "running":
            continue
        svc.execute_command(alice.fail_task(workflow_id=wid, task_id=search, error="timeout"))
        svc.execute_command(alice.retry_task(workflow_id=wid, task_id=search))
        svc.execute_command(alice.complete_task(workflow_id=wid, task_id=search, result_summary="found"))
        svc.execute_command(alice.start_task(workflow_id=wid, task_id=review))
        svc.execute_command(alice.complete_task(workflow_id=wid, task_id=review, result_summary="ok"))
        if outcome == "completed":
            svc.execute_command(alice.complete_workflow(workflow_id=wid))
        else:
            svc.execute_command(alice.fail_workflow(workflow_id=wid, reason="inconclusive"))


def values(array) -> list:
    """A plotly trace array: a list, or numpy data plotly sends base64-encoded."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def charts(at) -> dict[str, dict]:
    """Each plotly chart on the page by its title."""
    out = {}
    for chart in at.get("plotly_chart"):
        figure = json.loads(chart.proto.spec)
        out[figure["layout"]["title"]["text"]] = figure
    return out


def test_refresh_shows_charts_with_titles_axes_and_freshness(db_url, app_env):
    seed(db_url, plant)
    app_env(db_url)
    at = run_page(PAGE)
    assert "No statistics yet" in texts(at)  # the views have not seen the workflows yet

    at.button(key="stats_refresh").click()
    rerun(at)

    assert any("Statistics refreshed." in t.value for t in at.toast)
    shown = charts(at)
    assert set(shown) == {
        "Workflows finished per day, by outcome (line: created)",
        "Workflows by methodology and outcome (all time)",
        "Failure and retry rate by task kind",
        "Time to complete a workflow, by methodology",
        "Time to complete a task, by kind",
        "Open tasks per assignee (top 2 of 2)",
    }
    throughput = shown["Workflows finished per day, by outcome (line: created)"]
    assert throughput["layout"]["yaxis"]["title"]["text"] == "Workflows per day"
    assert throughput["layout"]["xaxis"]["title"]["text"] == "Day (UTC)"
    by_name = {trace["name"]: trace for trace in throughput["data"]}
    assert sum(values(by_name["Completed"]["y"])) == 2 and sum(values(by_name["Failed"]["y"])) == 1
    assert sum(values(by_name["Cancelled"]["y"])) == 1 and sum(values(by_name["Created"]["y"])) == 5
    kinds = shown["Failure and retry rate by task kind"]
    assert kinds["layout"]["yaxis"]["title"]["text"] == "Share of tasks (%)"
    retried = next(t for t in kinds["data"] if t["name"].startswith("Needed a retry"))
    assert dict(zip(values(retried["x"]), values(retried["y"]), strict=True))[
        "Literature search"
    ] == pytest.approx(75.0)  # 3 of the 4 started searches needed a second attempt
    durations = shown["Time to complete a workflow, by methodology"]
    assert durations["layout"]["yaxis"]["title"]["text"] in (
        "Duration (minutes)",
        "Duration (hours)",
        "Duration (days)",
    )

    freshness = [c.value for c in at.caption if c.value.startswith("From the view")]
    assert len(freshness) == 6 and all("refreshed 20" in c and "s ago" in c for c in freshness)
    assert {b.label for b in at.get("download_button")} == {
        "Download throughput_by_day.csv",
        "Download outcome_by_methodology.csv",
        "Download task_kinds.csv",
        "Download assignee_load.csv",
    }

    at.date_input(key="stats_range").set_value(
        (date.today() - timedelta(days=60), date.today() - timedelta(days=30))
    )
    rerun(at)
    assert "Workflows finished per day, by outcome (line: created)" not in charts(at)
    assert "No workflow was created or finished between" in texts(at)


def test_a_researcher_cannot_refresh_and_the_core_refuses_too(db_url, app_env, service):
    app_env(db_url, auth_mode="password")
    at = run_page(
        secrets={"users": {"rita": {"password_hash": bcrypt_hash("pw-rita-123"), "role": "researcher"}}}
    )
    sign_in(at, "rita", "pw-rita-123")
    at.switch_page(PAGE)
    rerun(at)

    refresh = at.button(key="stats_refresh")
    assert refresh.disabled
    assert "Refreshing the views now is for operators" in texts(at)
    assert "No statistics yet" in texts(at)  # and the empty state says what to do
    with pytest.raises(AuthorizationError, match="needs the operator role"):
        service.execute_command(CommandFactory(actor="rita", role="researcher").refresh_statistics())


# People's names that Plotly would render as markup, and that a spreadsheet would run as a formula.
MARKUP = [s for s in HOSTILE_INPUTS if s.startswith(("<a ", "<span", "<b>", "<script", "<img"))]
FORMULAS = [
    s.strip() for s in HOSTILE_INPUTS if s.strip()[:1] in ("=", "+", "-", "@") and len(s.strip()) <= 100
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = {"day", "methodology", "kind", "assignee"}  # every other column of the tables is a number


def strings(node):
    """Every string in a figure's JSON (trace values, names, templates, layout)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


@pytest.fixture
def downloads(monkeypatch):
    """The data of every download button the page draws, by file name."""
    seen: dict[str, bytes] = {}
    add = MediaFileManager.add

    def spy(self, data, mimetype, coordinates, file_name=None, is_for_static_download=False):
        if file_name is not None:  # a download (the page icon is a media file too, with no name)
            seen[file_name] = data
        return add(
            self,
            data,
            mimetype,
            coordinates,
            file_name=file_name,
            is_for_static_download=is_for_static_download,
        )

    monkeypatch.setattr(MediaFileManager, "add", spy)
    return seen


def plant_hostile_assignees(svc) -> None:
    alice = CommandFactory(actor="alice")
    kinds = ["literature_search", "review", "analysis"]
    wid = create_workflow(
        svc,
        title="Hostile names",
        tasks=[
            {"name": f"Task {i}", "assignee": name, "kind": kinds[i % 3]}
            for i, name in enumerate(MARKUP + FORMULAS)
        ],
    )
    svc.execute_command(alice.start_workflow(workflow_id=wid))


def test_hostile_assignees_are_text_in_chart_labels_and_csv_cells(db_url, app_env, downloads):
    assert len(MARKUP) >= 5 and {"=1+2", "+1", "-1+1", "@SUM(1)"} <= set(FORMULAS)
    seed(db_url, plant_hostile_assignees)
    app_env(db_url)
    at = run_page(PAGE)
    at.button(key="stats_refresh").click()
    rerun(at)

    shown = charts(at)
    load = shown[f"Open tasks per assignee (top {len(MARKUP + FORMULAS)} of {len(MARKUP + FORMULAS)})"]
    for trace in load["data"]:
        assert sorted(values(trace["y"])) == sorted(plotly_escape(name.strip()) for name in MARKUP + FORMULAS)
    for figure in shown.values():  # no tag from people's text survives anywhere Plotly renders labels
        rendered = list(strings(figure))
        assert not [
            s for s in rendered if "<a " in s or "<span" in s or "<b>" in s or "<img" in s or "<script" in s
        ], figure["layout"]["title"]["text"]

    assert set(downloads) == {
        "throughput_by_day.csv",
        "outcome_by_methodology.csv",
        "task_kinds.csv",
        "assignee_load.csv",
    }
    for name, data in downloads.items():
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
        assert rows, name
        for row in rows:
            for column, cell in row.items():
                if column in TEXT_COLUMNS:
                    assert not cell.startswith(FORMULA_STARTS), (name, column, cell)
                elif cell:
                    float(cell)  # numbers stay numbers (a negative one would keep its sign)
    names = [
        r["assignee"] for r in csv.DictReader(io.StringIO(downloads["assignee_load.csv"].decode("utf-8")))
    ]
    assert sorted(names) == sorted(csv_safe(name.strip()) for name in MARKUP + FORMULAS)
    assert "'=1+2" in names and "'-1+1" in names and "'@SUM(1)" in names


# The security review's names: a formula after a separator, where a spreadsheet splitting on `;`
# or `,` starts a new cell.
SEPARATED = ["bob;=1+1", "carol, +1", "dave;-1+1", "x | @SUM(1)"]


def plant_separated_assignees(svc) -> None:
    alice = CommandFactory(actor="alice")
    wid = create_workflow(
        svc,
        title="Separated names",
        tasks=[
            {"name": f"Task {i}", "assignee": name, "kind": "review"}
            for i, name in enumerate([*SEPARATED, "=2+2"])
        ],
    )
    svc.execute_command(alice.start_workflow(workflow_id=wid))


def test_statistics_downloads_quote_every_cell_and_neutralise_formulas_after_separators(
    db_url, app_env, downloads
):
    seed(db_url, plant_separated_assignees)
    app_env(db_url)
    at = run_page(PAGE)
    at.button(key="stats_refresh").click()
    rerun(at)

    assert set(downloads) == {
        "throughput_by_day.csv",
        "outcome_by_methodology.csv",
        "task_kinds.csv",
        "assignee_load.csv",
    }
    for name, data in downloads.items():
        text = data.decode("utf-8")
        # a reader in QUOTE_NONNUMERIC mode reads an unquoted field as a float: every cell is quoted
        assert all(
            isinstance(cell, str)
            for row in csv.reader(io.StringIO(text), quoting=csv.QUOTE_NONNUMERIC)
            for cell in row
        ), name
    load = downloads["assignee_load.csv"].decode("utf-8")
    names = [r["assignee"] for r in csv.DictReader(io.StringIO(load))]
    assert sorted(names) == sorted(["'bob;=1+1", "'carol, +1", "'dave;-1+1", "'x | @SUM(1)", "'=2+2"])
    assert '"\'bob;=1+1",' in load  # quoted, so a `;` separator does not split it either
    table = pd.read_csv(io.StringIO(load))  # quoted numbers are still read as numbers
    assert [c for c in table.columns if c != "assignee"]
    assert all(pd.api.types.is_numeric_dtype(table[c]) for c in table.columns if c != "assignee")
