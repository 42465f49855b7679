# ruff: noqa: F811  (pytest fixtures imported from page_harness)
"""A task's structured estimate (TaskAdded v2, issue 16) on the workflow detail: added with a
confidence, shown in the tasks table; a confidence without minutes is refused in one sentence."""

from __future__ import annotations

import pandas as pd
from page_harness import app_env, create_workflow, rerun, run_page, service  # noqa: F401
from streamlit.testing.v1 import AppTest

from cqrs_core.app.ui import md_escape

PAGE = "pages/workflows.py"
DETAIL = "pages/workflow.py"  # one workflow, ?workflow=<id>


def task_table(at: AppTest, wid: str):
    for frame in at.dataframe:
        if "confidence" in frame.value.columns:
            return frame.value
    raise AssertionError("no tasks table")


def add_task(at: AppTest, name: str, estimate: int | None, confidence: str | None) -> None:
    at.text_input(key="wf_add_name").set_value(name)
    at.text_input(key="wf_add_assignee").set_value("bob")
    at.number_input(key="wf_add_estimate").set_value(estimate)
    at.selectbox(key="wf_add_confidence").set_value(confidence)
    at.button(key="FormSubmitter:wf_add_task-Add task").click()
    rerun(at)


def test_a_task_added_with_a_confident_estimate_shows_it_and_a_bare_confidence_is_refused(
    db_url, app_env, service
):
    wid = create_workflow(service, actor="admin", tasks=[{"name": "Search"}])
    app_env(db_url, run_projections=True)
    at = run_page(DETAIL, query_params={"workflow": wid})

    add_task(at, "Analyse", 90, "high")
    assert any("Task added." in t.value for t in at.toast)
    rows = task_table(at, wid).set_index("name")
    assert (rows.loc["Analyse", "estimate"], rows.loc["Analyse", "confidence"]) == (90, "High")
    assert pd.isna(rows.loc["Search", "confidence"])

    add_task(at, "Guess", None, "low")
    assert [e.value for e in at.error] == [
        md_escape("estimate confidence: give the estimate in minutes too, or leave the confidence out")
    ]
    assert "Guess" not in set(task_table(at, wid)["name"])
