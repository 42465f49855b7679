"""Doing things on a Streamlit page in Chromium the way a person does, and reading what it shows.

Widgets are found by their labels and roles. Two Streamlit specifics need help:
* tables (st.dataframe, st.data_editor) draw on a canvas. The grid keeps an accessible copy of
  its visible cells (role=gridcell) in a visually hidden table, which is how a screen reader —
  and these tests — read them; clicks and edits go to the canvas at the cell's position.
* the page body does not scroll: the main area does. A full-page screenshot grows the viewport
  to the height of the main area and the sidebar first.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 900}
HEADER_HEIGHT = 35  # px: a grid's header row and each of its rows (Streamlit's default row height)
ROW_MARKER_X = 16  # px from the grid's left edge: the row-selection checkbox


def wait_until_idle(page: Page, timeout: float = 30_000) -> None:
    """Until the run a click or a key press just asked for has finished: the app's script state
    (what Streamlit's 'Running...' indicator shows) is back to not running. The short pause lets
    the request reach the server first."""
    page.wait_for_timeout(150)
    expect(page.get_by_test_id("stApp")).to_have_attribute(
        "data-test-script-state", "notRunning", timeout=timeout
    )


def open_page(page: Page, base_url: str, path: str, heading: str, timeout: float = 60_000) -> None:
    """Go to `path` and wait until the page's title heading is shown (the first page of a fresh
    server also opens the database, hence the long timeout)."""
    page.goto(f"{base_url}/{path.lstrip('/')}")
    expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible(timeout=timeout)
    wait_until_idle(page)


def nav_link(page: Page, name: str) -> Locator:
    """A page's link in the sidebar's navigation (app.py draw_navigation)."""
    return page.locator(".st-key-console_nav").get_by_role("link", name=name, exact=True)


def go_to(page: Page, link: str, heading: str) -> None:
    """Follow a link of the sidebar's navigation, in the same session."""
    nav_link(page, link).click()
    expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible(timeout=30_000)
    wait_until_idle(page)


def button(scope: Page | Locator, name: str) -> Locator:
    return scope.get_by_role("button", name=name, exact=True)


def toast(page: Page, text: str) -> Locator:
    return page.get_by_test_id("stToast").filter(has_text=text)


def metric_value(scope: Page | Locator, label: str) -> Locator:
    """The value of the st.metric labelled `label`."""
    metric = scope.get_by_test_id("stMetric").filter(
        has=scope.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    )
    return metric.get_by_test_id("stMetricValue")


def card(page: Page, title: str, button_name: str) -> Locator:
    """The innermost container holding the text `title` and the button `button_name` (one
    projection's row of controls, say)."""
    holding = (
        page.get_by_test_id("stVerticalBlock")
        .filter(has=page.get_by_text(title, exact=True))
        .filter(has=button(page, button_name))
    )
    # Innermost by structure, not by document order: a block that holds both but has no inner
    # block holding both. (`.last` picked the whole list of cards whenever the title was also
    # drawn further down the page, e.g. as the lag chart's selected projection.)
    return holding.filter(has_not=holding)


def badge(scope: Page | Locator, text: str) -> Locator:
    """A badge reading `text` (its icon, drawn from a font, is text too: ':material/pause: x')."""
    return scope.get_by_text(re.compile(rf"(^|[\sa-z_]){re.escape(text)}$"))


# ---------------------------------------------------------------- tables on a canvas


def grid_cell(scope: Page | Locator, text: str) -> Locator:
    """A table cell showing exactly `text` (from the grid's accessible copy of what it draws)."""
    return scope.get_by_role("gridcell", name=text, exact=True, include_hidden=True)


def _row_y(box: dict, row: int) -> float:
    return box["y"] + HEADER_HEIGHT * (row + 1) + HEADER_HEIGHT / 2


def select_row(grid: Locator, row: int) -> None:
    """Tick the selection checkbox of `row` (0 = first data row) of a selectable st.dataframe."""
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    grid.page.mouse.click(box["x"] + ROW_MARKER_X, _row_y(box, row))


def type_into_cell(grid: Locator, row: int, x_offset: float, text: str) -> None:
    """Open the editor of the cell at `row`, `x_offset` px from the grid's left edge, type `text`
    and commit it with Enter. The first double-click on a grid that has not had focus yet may only
    focus it, so it is repeated until the editor opens."""
    page = grid.page
    editor = page.locator("textarea.gdg-input")
    for _ in range(4):
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        page.mouse.dblclick(box["x"] + x_offset, _row_y(box, row))
        try:
            editor.wait_for(timeout=1_500)
            break
        except PlaywrightTimeout:
            continue
    editor.fill(text)
    editor.press("Enter")
    expect(editor).to_have_count(0)


# ---------------------------------------------------------------- other widgets


def choose(page: Page, label: str, option: str) -> None:
    """Pick `option` in the st.selectbox labelled `label`."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def add_tags(page: Page, label: str, tags: list[str]) -> None:
    """Type new options into the st.multiselect labelled `label` (accept_new_options)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    for tag in tags:
        box.press_sequentially(tag)
        box.press("Enter")
    box.press("Escape")


def download_csv(page: Page, button_label: str) -> list[dict[str, str]]:
    """Click a download button and read the CSV file it gives."""
    with page.expect_download() as download:
        button(page, button_label).click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


# ---------------------------------------------------------------- screenshots


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot at 1440 px wide into docs/screenshots/<name>.png. Toasts and the
    running indicator are hidden: they are moments, not the page."""
    page.mouse.move(VIEWPORT["width"] - 8, VIEWPORT["height"] // 2)  # off any hover effect
    wait_until_idle(page)
    height = page.evaluate(
        """() => Math.max(900, ...['stMain', 'stSidebarContent'].map(id => {
               const el = document.querySelector(`[data-testid="${id}"]`);
               return el ? el.scrollHeight : 0;
           }))"""
    )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": int(height)})
    try:
        page.wait_for_timeout(600)  # charts re-lay themselves out for the new size
        wait_until_idle(page)
        path = SCREENSHOTS / f"{name}.png"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(path),
            animations="disabled",
            caret="hide",
            style='[data-testid="stToastContainer"], [data-testid="stStatusWidget"] '
            "{ visibility: hidden !important; }",
        )
        return path
    finally:
        page.set_viewport_size(VIEWPORT)


def number(text: str) -> int:
    """The first whole number in `text` ('1,234 events' -> 1234)."""
    match = re.search(r"\d[\d,]*", text)
    if match is None:
        raise AssertionError(f"no number in {text!r}")
    return int(match.group().replace(",", ""))
