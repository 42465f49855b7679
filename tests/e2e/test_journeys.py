"""The console's journeys in real Chromium, against `streamlit run app.py` on a seeded PostgreSQL
database: what people do on each page and what they then see. Each journey also saves a
full-page screenshot of the pages it passes through into docs/screenshots/ (1440 px wide)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from streamlit_screen import (
    add_tags,
    badge,
    button,
    card,
    choose,
    download_csv,
    go_to,
    grid_cell,
    metric_value,
    number,
    open_page,
    save_screenshot,
    select_row,
    toast,
    type_into_cell,
    wait_until_idle,
)

pytestmark = pytest.mark.e2e

FRESH_METHODOLOGY_VIEW = re.compile(r"^From the view stats_methodology_outcomes, refreshed .* \([0-9] s ago")
TASK_NAME_X = 100  # px into the New workflow form's task table: inside its first column, Task


def create_workflow_in_form(
    page: Page,
    base_url: str,
    *,
    title: str,
    question: str,
    tasks: list[str],
    methodology: str | None = None,
    priority: str | None = None,
    tags: list[str] | None = None,
    screenshot: str | None = None,
) -> None:
    """Fill in the New workflow form, submit it and wait for the new workflow's detail to open."""
    open_page(page, base_url, "new_workflow", "New workflow")
    page.get_by_label("Title").fill(title)
    page.get_by_label("Research question").fill(question)
    if methodology:
        choose(page, "Methodology", methodology)
    if priority:
        page.get_by_role("radiogroup", name="Priority").get_by_role(
            "radio", name=priority, exact=True
        ).click()
    if tags:
        add_tags(page, "Tags", tags)
    table = page.get_by_test_id("stDataFrame")
    for row, name in enumerate(tasks):
        type_into_cell(table, row, TASK_NAME_X, name)
    page.keyboard.press("Escape")  # leave the table: no cell stays selected
    # The table hands its edits to Streamlit a moment after the last one (debounced); a submit
    # sooner than that loses them. A person never clicks that fast; the test must wait.
    page.wait_for_timeout(1_000)
    if screenshot:
        save_screenshot(page, screenshot)
    button(page, "Create workflow").click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30_000)
    wait_until_idle(page)


def completed_count(page: Page, methodology: str) -> int:
    """Completed workflows of `methodology` in the Statistics page's outcome-by-methodology table."""
    rows = download_csv(page, "Download outcome_by_methodology.csv")
    return next((int(r["completed"]) for r in rows if r["methodology"] == methodology), 0)


def test_a_workflow_created_in_the_form_is_listed_searchable_and_opens_with_its_tasks(console, new_page):
    page = new_page()
    title = "Sleep quality and recall in night-shift nurses"
    tasks = ["Literature search", "Recruit participants", "Memory tests"]

    create_workflow_in_form(
        page,
        console.url,
        title=title,
        question="Does working night shifts change how well nurses remember?",
        tasks=tasks,
        priority="High",
        tags=["sleep", "memory"],
        screenshot="new_workflow",
    )

    # The detail opens straight away (read-your-writes): a draft with the three tasks, pending.
    expect(page.get_by_text("draft", exact=True).first).to_be_visible()
    expect(page.get_by_text("High priority", exact=False)).to_be_visible()
    expect(page.get_by_text("0 of 3 tasks completed (0%)")).to_be_visible()
    expect(page.get_by_role("tab", name="Tasks (3)")).to_be_visible()
    for name in tasks:
        expect(grid_cell(page, name)).to_have_count(1)
    expect(button(page, "Start workflow")).to_be_enabled()

    # The list has it among the seeded workflows, newest first.
    button(page, "All workflows").click()
    expect(page.get_by_role("heading", name="Workflows", exact=True)).to_be_visible()
    expect(page.get_by_text(f"1–20 of {console.seeded_workflows + 1:,} workflows")).to_be_visible()
    expect(grid_cell(page, title)).to_have_count(1)
    save_screenshot(page, "workflows")

    # A full-text search finds it, with the words that matched highlighted.
    search = page.get_by_role("textbox", name="Search")
    search.fill('"sleep quality" recall nurses')
    search.press("Enter")
    expect(page.get_by_text("1–1 of 1 workflows · ordered by relevance")).to_be_visible()
    hits = page.locator(".wf-search-hits")
    expect(hits).to_contain_text("Why they matched")
    expect(hits.locator("mark").first).to_be_visible()
    expect(grid_cell(page, title)).to_have_count(1)

    # Selecting its row opens its detail again.
    select_row(page.get_by_test_id("stDataFrame"), 0)
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
    expect(page.get_by_text("Does working night shifts change how well nurses remember?")).to_be_visible()


def test_running_a_workflows_tasks_to_completion_shows_in_statistics_after_a_refresh(console, new_page):
    page = new_page()
    title = "Replication of the spacing effect in adult learners"
    tasks = ["Find earlier studies", "Run the experiment", "Write up"]

    open_page(page, console.url, "statistics", "Statistics")
    before = completed_count(page, "case_study")

    create_workflow_in_form(
        page,
        console.url,
        title=title,
        methodology="Case study",
        tasks=tasks,
        question="Does spacing out study sessions help adults remember more?",
    )
    button(page, "Start workflow").click()
    expect(toast(page, "Workflow started.")).to_be_visible()
    expect(page.get_by_text("running", exact=True).first).to_be_visible()

    tasks_table = page.get_by_test_id("stDataFrame").first
    for row, name in enumerate(tasks):
        select_row(tasks_table, row)
        button(page, "Start task").click()
        expect(toast(page, "Task started.")).to_be_visible()
        page.get_by_label("Result summary").fill(f"{name}: done, notes in the shared folder.")
        button(page, "Complete task").click()
        expect(
            page.get_by_text("This task is completed; there is nothing more to do with it.")
        ).to_be_visible()
        expect(page.get_by_text(f"{row + 1} of 3 tasks completed")).to_be_visible()

    page.get_by_role("button", name="Complete…").click()
    button(page, "Complete workflow").click()
    expect(page.get_by_text("This workflow is completed; nothing more can happen to it.")).to_be_visible()
    expect(page.get_by_text("3 of 3 tasks completed (100%)")).to_be_visible()
    expect(page.get_by_text("completed", exact=True).first).to_be_visible()
    save_screenshot(page, "workflow_detail")

    # Statistics come from materialized views: the completion shows once they are refreshed.
    go_to(page, "Statistics", "Statistics")
    assert completed_count(page, "case_study") == before
    button(page, "Refresh now").click()
    expect(toast(page, "Statistics refreshed.")).to_be_visible()
    wait_until_idle(page)
    expect(page.get_by_text(FRESH_METHODOLOGY_VIEW).first).to_be_visible()
    save_screenshot(page, "statistics")
    assert completed_count(page, "case_study") == before + 1


def test_statistics_refreshed_now_stay_refreshed_on_the_next_interaction(console, new_page):
    """Refresh now shows the views as just refreshed; whatever the person does next on the page
    (here: download a table, which reruns it) must not bring back the figures from before."""
    page = new_page()
    open_page(page, console.url, "statistics", "Statistics")
    caption = page.get_by_text(re.compile(r"^From the view stats_methodology_outcomes, refreshed")).first
    button(page, "Refresh now").click()
    expect(toast(page, "Statistics refreshed.")).to_be_visible()
    wait_until_idle(page)
    expect(page.get_by_text(FRESH_METHODOLOGY_VIEW).first).to_be_visible()
    refreshed = re.search(r"refreshed ([\d-]+ [\d:]+ UTC)", caption.inner_text()).group(1)

    download_csv(page, "Download task_kinds.csv")
    wait_until_idle(page)
    expect(caption).to_contain_text(f"refreshed {refreshed}", timeout=3_000)


def confirmed(page, text: str):
    """A confirmation the Demo page draws in the card of the button (not a toast: it would cover
    the page's caption)."""
    return page.get_by_test_id("stAlertContentSuccess").filter(has_text=text).first


def test_lag_rises_under_demo_load_while_a_projection_is_paused_and_falls_after(console, new_page):
    page = new_page()
    open_page(page, console.url, "demo", "Demo")
    projection = "workflow_summary"
    lag = metric_value(page, "Lag")
    expect(page.get_by_role("combobox", name="Projection")).to_have_value(projection)  # the first one
    expect(lag).to_have_text("0 events", timeout=20_000)

    # Pause it, then put the console under a live load: events pile up in front of it.
    button(page, "Pause").click()
    expect(confirmed(page, f"Paused {projection}.")).to_be_visible()
    rate = page.get_by_label("Commands per second")
    rate.fill("40")
    rate.press("Enter")  # and let the page take it in before Start (see the next test)
    wait_until_idle(page)
    button(page, "Start").click()
    expect(confirmed(page, "Live load started at 40 commands/s.")).to_be_visible()
    expect(metric_value(page, "State")).to_have_text("paused", timeout=10_000)
    expect(lag).not_to_have_text("0 events", timeout=15_000)
    expect(page.get_by_text(re.compile(r"Target 40 commands/s"))).to_be_visible()

    # The operator's console shows the same: the paused projection is behind the log.
    go_to(page, "Projections", "Projections")
    controls = card(page, projection, "Rebuild")
    expect(badge(controls, "paused")).to_be_visible()
    expect(controls.get_by_text(re.compile(r"^[1-9][\d,]* events · [\d.]+ s behind$"))).to_be_visible()

    # Stop the load and resume the projection: it catches up and the lag falls back to zero.
    go_to(page, "Demo", "Demo")
    button(page, "Stop").click()
    expect(confirmed(page, "Live load stopped after")).to_be_visible()
    behind = number(lag.inner_text())
    assert behind > 0
    button(page, "Resume").click()
    expect(confirmed(page, f"Resumed {projection}.")).to_be_visible()
    expect(lag).to_have_text("0 events", timeout=30_000)
    expect(metric_value(page, "State")).to_have_text(re.compile("running|catching up"))
    expect(
        page.get_by_text(f"Lag of {projection}, last 5 minutes").first
    ).to_be_visible()  # the chart's title
    save_screenshot(page, "demo")


def test_a_load_rate_typed_just_before_start_is_the_rate_the_load_runs_at(console, new_page):
    """A person types a rate and clicks Start straight away; the click takes the focus out of the
    field, which asks for a rerun with the new rate just before the click asks for another. The
    load must run at the rate on the screen whichever of the two the server gets to first (a busy
    server is slower than any person's click; Playwright's click stands in for that)."""
    page = new_page()
    open_page(page, console.url, "demo", "Demo")
    page.get_by_label("Commands per second").fill("35")
    try:
        button(page, "Start").click()
        expect(page.get_by_text(re.compile(r"^Target \d+ commands/s"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"^Target 35 commands/s"))).to_be_visible(timeout=2_000)
    finally:
        if button(page, "Stop").is_enabled():
            button(page, "Stop").click()
            expect(button(page, "Start")).to_be_enabled()


def test_rebuilding_a_projection_from_the_projections_page_runs_to_completion(console, new_page):
    page = new_page()
    open_page(page, console.url, "projections", "Projections")
    projection = "task_summary"
    controls = card(page, projection, "Rebuild")
    expect(badge(controls, "running")).to_be_visible()

    button(controls, "Rebuild").click()
    expect(toast(page, f"Rebuild of {projection} requested; the progress shows here.")).to_be_visible()
    expect(controls.get_by_text(re.compile(r"^(Rebuild requested|Rebuilding: )"))).to_be_visible()
    expect(button(controls, "Rebuild")).to_be_disabled()

    # The scheduler picks the request up, replays the log into shadow tables and swaps them in.
    expect(controls.get_by_text(re.compile(r"^(Rebuild requested|Rebuilding: )"))).to_have_count(
        0, timeout=60_000
    )
    expect(button(controls, "Rebuild")).to_be_enabled()
    expect(badge(controls, "running")).to_be_visible()
    expect(controls.get_by_text("0 events · 0.0 s behind")).to_be_visible(timeout=15_000)
    expect(controls.get_by_text("The last rebuild failed:")).to_have_count(0)
    save_screenshot(page, "projections")


def test_a_researcher_is_refused_operator_actions_with_a_clear_message(password_console, new_page):
    page = new_page()
    page.goto(password_console.url)
    expect(
        page.get_by_text("Sign in with your user name and password in the sidebar to continue.")
    ).to_be_visible(timeout=60_000)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_label("User name").fill("rita")
    sidebar.get_by_role("textbox", name="Password").fill("rita-reads-papers")
    button(sidebar, "Sign in").click()
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    expect(sidebar.get_by_text("researcher", exact=True)).to_be_visible()

    go_to(page, "Projections", "Projections")
    expect(
        page.get_by_text(
            "You are signed in with the researcher role: you can watch, but pausing, resuming, "
            "rebuilding and handling parked events need the operator role."
        )
    ).to_be_visible()
    for action in ("Pause", "Rebuild"):
        expect(button(page, action).first).to_be_disabled()

    go_to(page, "Statistics", "Statistics")
    expect(button(page, "Refresh now")).to_be_disabled()
    # Hovering the disabled button says why (the tooltip sits on the button's wrapper).
    page.get_by_test_id("stTooltipHoverTarget").filter(has=button(page, "Refresh now")).first.hover()
    expect(
        page.get_by_role("tooltip").filter(has_text="Refreshing the views is an operator action.")
    ).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Refreshing the views now is for operators"))).to_be_visible()

    go_to(page, "Demo", "Demo")
    expect(
        page.get_by_text("Presenter actions need the operator role; you can watch what is running.")
    ).to_be_visible()
    for action in ("Seed", "Start", "Pause"):
        expect(button(page, action)).to_be_disabled()


def test_overview_counts_today_in_the_browsers_time_zone_and_says_which(console, new_page):
    page = new_page(timezone_id="Asia/Tokyo")
    open_page(page, console.url, "", "Overview")
    expect(page.get_by_text("“Today” and times on this page are in Asia/Tokyo.")).to_be_visible()
    expect(
        page.get_by_text(re.compile(r"^Newest first by when each event happened \(Asia/Tokyo\)"))
    ).to_be_visible()


def test_overview_event_explorer_and_system_show_what_happened(console, new_page):
    page = new_page()
    open_page(page, console.url, "", "Overview")
    expect(metric_value(page, "Workflows")).not_to_have_text("0")
    assert number(metric_value(page, "Workflows").inner_text()) >= console.seeded_workflows
    expect(page.get_by_role("heading", name="Health")).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Checked .* UTC"))).to_be_visible()
    expect(page.get_by_role("heading", name="Recent activity")).to_be_visible()
    save_screenshot(page, "overview")

    expect(page.get_by_text("“Today” and times on this page are in UTC.")).to_be_visible()

    go_to(page, "Event explorer", "Event explorer")
    expect(page.get_by_text(re.compile(r"^Positions [\d,]+ – [\d,]+ · 50 events$"))).to_be_visible()
    save_screenshot(page, "event_explorer")
    types = page.get_by_role("combobox", name="Event types")
    types.click()
    # Typing filters the list: with the alert events there are more types than the open list shows.
    page.keyboard.type("WorkflowCompleted")
    page.get_by_role("option", name="WorkflowCompleted", exact=True).click()
    types.press("Escape")
    wait_until_idle(page)
    log = page.get_by_test_id("stDataFrame").first  # the event log (the schema lab's census lists every type)
    expect(grid_cell(log, "WorkflowCompleted").first).to_be_attached()
    expect(grid_cell(log, "TaskStarted")).to_have_count(0)

    go_to(page, "System", "System")
    expect(page.get_by_role("heading", name="Settings in effect")).to_be_visible()
    expect(grid_cell(page, "CQRS_DATABASE_URL")).to_have_count(1)
    expect(page.get_by_role("heading", name="Scheduler")).to_be_visible()
    save_screenshot(page, "system")


# Last in this module: it poisons the console it shares with the journeys above (and recovers).
def test_an_operator_sees_the_alert_a_poison_event_raises_acknowledges_it_and_it_resolves(console, new_page):
    """The alert evaluator in the app's own runtime raises "Parked events" for a poison event;
    the operator finds it on the Alerts page, acknowledges it with a reason, which its history
    then shows; discarding the poison event on the Demo page clears the condition, and the
    evaluator resolves the alert by itself."""
    page = new_page()
    open_page(page, console.url, "demo", "Demo")
    button(page, "Inject a poison event").click()
    expect(page.get_by_text(re.compile(r"^Injected a poison event at position "))).to_be_visible()

    go_to(page, "Alerts", "Alerts")
    # The evaluator runs every CQRS_ALERT_EVALUATE_SECONDS (5 s) and the page shows what the
    # alert_summary projection has: a reload shows the new alerts.
    for _ in range(20):
        if grid_cell(page, "Projection faulted").count():
            break
        page.wait_for_timeout(1_500)
        open_page(page, console.url, "alerts", "Alerts")
    # Critical first: workflow_summary stops in front of the poison event (its policy), and that
    # alert's steps are shown first.
    expect(page.get_by_role("combobox", name="Alert", exact=True)).to_have_value(
        re.compile(r"^Projection faulted · workflow_summary · raised ")
    )
    history = page.get_by_test_id("stDataFrame").filter(has=grid_cell(page, "alerts"))  # who: the evaluator
    expect(grid_cell(history, "raised")).to_be_attached()

    page.get_by_role("textbox", name="Why").first.fill("Discarding the poison event from the demo")
    button(page, "Acknowledge").click()
    expect(toast(page, "Acknowledged.")).to_be_visible()
    expect(grid_cell(history, "acknowledged")).to_be_attached()
    expect(grid_cell(history, "Discarding the poison event from the demo")).to_be_attached()
    save_screenshot(page, "alerts")

    go_to(page, "Demo", "Demo")
    button(page, "Recover: discard it").click()
    expect(page.get_by_text("Discarded the poison event; the projections move past it.")).to_be_visible()
    for _ in range(20):
        open_page(page, console.url, "alerts", "Alerts")
        if page.get_by_text("No open alerts: every rule finds things as they should be.").count():
            break
        page.wait_for_timeout(1_500)
    # Both resolved by the evaluator (state "resolved", by "alerts"), listed under Recently resolved.
    expect(page.get_by_text("No open alerts: every rule finds things as they should be.")).to_be_visible()
    resolved = page.get_by_test_id("stDataFrame").first
    expect(grid_cell(resolved, "Projection faulted")).to_be_attached()
    expect(grid_cell(resolved, "Parked events").first).to_be_attached()
