"""The detail page's dependency graph and timeline in real Chromium, at 1440x900 and 1024x768:
with 50 tasks they stay inside the page's width with labels large enough to read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Page, expect
from streamlit_screen import open_page, wait_until_idle

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.infra.config import load_settings

pytestmark = pytest.mark.e2e

STAGES, PER_STAGE = 10, 5  # 50 tasks: each depends on every task of the stage before


def plant_fifty_tasks(database_url: str) -> str:
    service = (
        CQRSServiceBuilder(load_settings(database_url=database_url))
        .with_database_url(database_url)
        .with_migrations(False)
        .with_rate_limit(1e9, 10**9)
        .build()
    )
    admin = CommandFactory(actor="admin")
    base = datetime.now(UTC) - timedelta(days=3)
    ids = [[str(uuid.uuid4()) for _ in range(PER_STAGE)] for _ in range(STAGES)]
    wid = str(uuid.uuid4())
    tasks = [
        {
            "task_id": ids[s][k],
            "name": f"Stage {s + 1} step {k + 1}: "
            + [
                "collect the survey data",
                "clean the records",
                "code the interviews",
                "fit the model",
                "write up the notes",
            ][k],
            "kind": "analysis",
            "assignee": "admin",
            "estimate_minutes": 30 + 15 * ((s + k) % 4),
            "depends_on": ids[s - 1] if s else [],
        }
        for s in range(STAGES)
        for k in range(PER_STAGE)
    ]
    try:
        run = lambda cmd: service.execute_command(cmd, trusted_import=True)  # noqa: E731
        at = lambda minutes: {"occurred_at": base + timedelta(minutes=minutes)}  # noqa: E731
        run(
            admin.create_research_workflow(
                workflow_id=wid,
                title="Fifty tasks",
                research_question="Does it fit?",
                methodology="exploratory",
                tasks=tasks,
                **at(0),
            )
        )
        run(admin.start_workflow(workflow_id=wid, **at(1)))
        clock = 2
        for s in range(4):  # four stages done, the fifth running
            for k in range(PER_STAGE):
                run(admin.start_task(workflow_id=wid, task_id=ids[s][k], **at(clock)))
                clock += 7
            for k in range(PER_STAGE):
                run(admin.complete_task(workflow_id=wid, task_id=ids[s][k], result_summary="ok", **at(clock)))
                clock += 11
        for k in range(PER_STAGE):
            run(admin.start_task(workflow_id=wid, task_id=ids[4][k], **at(clock)))
    finally:
        service.close()
    return wid


@pytest.fixture(scope="module")
def fifty(empty_console):
    return empty_console, plant_fifty_tasks(empty_console.database_url)


@pytest.mark.parametrize("viewport", [{"width": 1440, "height": 900}, {"width": 1024, "height": 768}])
def test_fifty_tasks_fit_the_page_in_both_pictures(fifty, new_page, viewport):
    console, wid = fifty
    page: Page = new_page()
    page.set_viewport_size(viewport)
    open_page(page, console.url, f"workflows?workflow={wid}", "Fifty tasks")
    main = page.get_by_test_id("stMainBlockContainer").bounding_box()
    assert main is not None
    page.get_by_role("heading", name="Dependencies and timeline").scroll_into_view_if_needed()

    # the graph: 50 nodes, scaled to the column's width at most, its names still readable
    svg = page.get_by_test_id("stGraphVizChart").locator("svg")
    expect(svg.locator("g.node")).to_have_count(50, timeout=30_000)
    drawn = svg.evaluate(
        """s => ({right: s.getBoundingClientRect().right,
                 smallest: Math.min(...[...s.querySelectorAll('g.node text')]
                                     .map(t => t.getBoundingClientRect().height))})"""
    )
    assert drawn["right"] <= main["x"] + main["width"] + 1, (drawn, main)
    assert drawn["smallest"] >= 10, drawn  # px: a scaled-down 11 pt label stays legible

    # the timeline: 25 bars (25 tasks never started), inside the column
    page.get_by_role("tab", name="Timeline").click()
    wait_until_idle(page)
    expect(page.get_by_text("25 task(s) never started and are not drawn.")).to_be_visible()
    chart = page.get_by_test_id("stVegaLiteChart")
    expect(chart).to_be_visible()
    box = chart.bounding_box()
    assert box is not None and box["x"] + box["width"] <= main["x"] + main["width"] + 1, (box, main)
    assert box["height"] >= 25 * 20  # a row per bar, not squeezed into a default height
