"""Forms in real Chromium: what a person types is what the console keeps (issue 15, items 8-12b).

A console of its own on an empty database (sign-in off, projections running): these journeys
count the workflows they create.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from conftest import REPO, Console, fresh_database, server_env, start_streamlit, stop_streamlit
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from streamlit_screen import (
    button,
    grid_cell,
    nav_link,
    open_page,
    select_row,
    type_into_cell,
    wait_until_idle,
)

pytestmark = pytest.mark.e2e

TASK_NAME_X = 100  # px into the New workflow form's task table: inside its first column, Task
TASK_COLUMNS = ["Task", "Kind", "Assignee", "Estimate", "Depends on"]  # the table's columns, in order


@pytest.fixture(scope="module")
def empty_console(chromium_path, pg_admin_url, template_db, server_logs) -> Iterator[Console]:
    with fresh_database(pg_admin_url, template_db) as database_url:
        env = server_env(database_url, run_projections="true")
        server = start_streamlit(REPO, env, server_logs / f"forms-{uuid.uuid4().hex[:6]}.log")
        try:
            yield Console(server.url, database_url, 0)
        finally:
            stop_streamlit(server)


def workflow_titles(database_url: str) -> list[str]:
    """Titles of the workflows the event log says were created (no read model in between)."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text("SELECT payload->>'title' FROM events WHERE event_type = 'WorkflowCreated'")
            )
            return [r[0] for r in rows]
    finally:
        engine.dispose()


def task_dependencies(database_url: str, title: str) -> dict[str, list[str]]:
    """Each task of the workflow titled `title` and the names of the tasks it depends on, as the
    event log recorded them."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT t.payload FROM events w JOIN events t ON t.stream_id = w.stream_id "
                    "WHERE w.event_type = 'WorkflowCreated' AND w.payload->>'title' = :title "
                    "AND t.event_type = 'TaskAdded' ORDER BY t.version"
                ),
                {"title": title},
            )
            tasks = [r[0] for r in rows]
    finally:
        engine.dispose()
    names = {t["task_id"]: t["name"] for t in tasks}
    return {t["name"]: [names[d] for d in t["depends_on"]] for t in tasks}


def open_cell_editor(grid: Locator, row: int, column: str) -> None:
    """Open the editor of the cell in `row` (0 = first) under the header `column`: select the
    row's first cell, move right to the column by keyboard, press Enter."""
    page = grid.page
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + TASK_NAME_X, box["y"] + 35 * (row + 1) + 17)
    for _ in range(TASK_COLUMNS.index(column)):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")


def start_form(page: Page, base_url: str, title: str) -> None:
    open_page(page, base_url, "new_workflow", "New workflow")
    page.get_by_label("Title").fill(title)
    page.get_by_label("Research question").fill("Is what was typed what was kept?")


def test_tasks_typed_just_before_create_are_all_kept(empty_console, new_page):
    """Type the last task and click Create at once (Playwright's click follows the Enter within
    a few milliseconds): the workflow has exactly the tasks the table showed, every time."""
    page = new_page()
    for attempt in range(4):
        title = f"Quick hands {attempt}"
        tasks = [f"First step {attempt}", f"Second step {attempt}"]
        start_form(page, empty_console.url, title)
        table = page.get_by_test_id("stDataFrame")
        for row, name in enumerate(tasks):
            type_into_cell(table, row, TASK_NAME_X, name)
        button(page, "Create workflow").click()  # no pause: the edit and the click race
        expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30_000)
        wait_until_idle(page)
        expect(page.get_by_role("tab", name="Tasks (2)")).to_be_visible()
        for name in tasks:
            expect(grid_cell(page, name)).to_have_count(1)


def test_a_pasted_title_over_the_limit_is_kept_and_the_limit_is_said(empty_console, new_page):
    page = new_page()
    long_title = "A title pasted from a grant proposal that goes on and on " * 5  # 290 characters
    start_form(page, empty_console.url, "placeholder")
    title = page.get_by_label("Title")
    title.fill("")
    title.focus()
    page.keyboard.insert_text(long_title)  # what a paste does: one input event with all the text
    expect(title).to_have_value(long_title)
    before = workflow_titles(empty_console.database_url)
    button(page, "Create workflow").click()
    wait_until_idle(page)
    expect(page.get_by_text("at most 200 characters", exact=False).first).to_be_visible()
    expect(title).to_have_value(long_title)
    assert workflow_titles(empty_console.database_url) == before


def test_the_sidebar_workflows_link_leads_from_a_workflow_back_to_the_filtered_list(empty_console, new_page):
    page = new_page()
    for title in ("Sidebar way back", "Another study"):
        start_form(page, empty_console.url, title)
        button(page, "Create workflow").click()
        expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30_000)
        wait_until_idle(page)

    open_page(page, empty_console.url, "workflows", "Workflows")
    search = page.get_by_role("textbox", name="Search")
    search.fill("sidebar")
    search.press("Enter")
    expect(page.get_by_text("1–1 of 1 workflows · ordered by relevance")).to_be_visible()
    select_row(page.get_by_test_id("stDataFrame"), 0)
    expect(page.get_by_role("heading", name="Sidebar way back", exact=True)).to_be_visible()
    wait_until_idle(page)

    nav_link(page, "Workflows").click()
    expect(page.get_by_role("heading", name="Workflows", exact=True)).to_be_visible(timeout=15_000)
    wait_until_idle(page)
    expect(page.get_by_role("textbox", name="Search")).to_have_value("sidebar")
    expect(page.get_by_text("1–1 of 1 workflows · ordered by relevance")).to_be_visible()
    assert "workflow=" not in page.url


def test_depends_on_offers_the_task_typed_above_on_the_first_fill(empty_console, new_page):
    """Issue 15 item 10: type two tasks; on row 2, "Depends on" offers row 1's name at once
    (no Create first); pick it, create, and the workflow's second task depends on the first."""
    page = new_page()
    title = "Offered dependencies"
    start_form(page, empty_console.url, title)
    table = page.get_by_test_id("stDataFrame")
    type_into_cell(table, 0, TASK_NAME_X, "Collect the data")
    type_into_cell(table, 1, TASK_NAME_X, "Analyse the data")
    wait_until_idle(page)  # the table's own rerun: the names reach the server

    open_cell_editor(table, 1, "Depends on")
    option = page.get_by_role("option", name="Collect the data", exact=True)
    expect(option).to_be_visible()
    expect(page.get_by_role("option", name="Analyse the data", exact=True)).to_be_visible()
    option.click()
    page.keyboard.press("Enter")
    expect(page.locator("textarea.gdg-input")).to_have_count(0)

    button(page, "Create workflow").click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30_000)
    wait_until_idle(page)
    assert task_dependencies(empty_console.database_url, title) == {
        "Collect the data": [],
        "Analyse the data": ["Collect the data"],
    }
