"""Every page in real Chromium at 1440x900 and at 1024x768 (a laptop): nothing a person must read
is cut off, the key columns of the first table are on screen, no request leaves the machine, and
axe-core finds no serious or critical accessibility violation. Plus the live bits a page load
alone cannot show: the Statistics views' age counts up, the Demo's Seed button comes back."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect
from streamlit_screen import SCREENSHOTS, button, open_page, wait_until_idle

from cqrs_core.app import ui

pytestmark = pytest.mark.e2e

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
SIZES = {"1440x900": {"width": 1440, "height": 900}, "1024x768": {"width": 1024, "height": 768}}
PAGES = [
    ("", "Overview"),
    ("new_workflow", "New workflow"),
    ("workflows", "Workflows"),
    ("statistics", "Statistics"),
    ("projections", "Projections"),
    ("event_explorer", "Event explorer"),
    ("system", "System"),
    ("demo", "Demo"),
]

# Pages whose first table shows its key columns first within ui.KEY_COLUMNS_WIDTH_BUDGET (the
# AppTest tests check the column configuration; this checks that the table has that room).
KEY_COLUMN_PAGES = {"projections"}

# Metrics (label and value), button labels and badges whose text is wider than their box: what
# the browser draws as "78,1…", "P." or "runni…".
TRUNCATED = """() => {
    const seen = [];
    const selectors = [
        '[data-testid="stMetricValue"]', '[data-testid="stMetricValue"] *',
        '[data-testid="stMetricLabel"]', '[data-testid="stMetricLabel"] *',
        'button', 'button *',
        '[data-testid="stMarkdownContainer"] span[class*="badge" i]', 'span[class*="badge" i] *',
    ];
    for (const el of document.querySelectorAll(selectors.join(','))) {
        const box = el.getBoundingClientRect();
        if (box.width === 0 || box.height === 0) continue;  // not drawn (a collapsed expander)
        if (el.closest('[data-testid="stSidebarCollapsedControl"], [data-testid="stToolbar"]')) continue;
        if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0) {
            seen.push(`${el.tagName.toLowerCase()} "${el.textContent.trim().slice(0, 40)}" `
                      + `(${el.scrollWidth} px in ${el.clientWidth} px)`);
        }
    }
    return seen;
}"""


def offline(page: Page) -> list[str]:
    """Fail any request to a host other than 127.0.0.1 (and list it): the console must work on a
    machine without internet access, with nothing fetched from outside (fonts, icons)."""
    outside: list[str] = []

    def route(r: Route) -> None:
        host = urlsplit(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return outside


def open_sized(new_page, console, size: str) -> tuple[Page, list[str]]:
    page = new_page()
    page.set_viewport_size(SIZES[size])
    return page, offline(page)


def axe_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
                .map(v => ({id: v.id, impact: v.impact, help: v.help,
                            where: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
        }"""
    )
    return [json.dumps(v) for v in found]


@pytest.fixture(scope="module")
def axe_script() -> Path | None:
    """axe.min.js from tests/e2e/node_modules (`npm ci` in tests/e2e); a failure when missing under
    CQRS_REQUIRE_E2E=1, None (the check is skipped) otherwise."""
    if AXE.is_file():
        return AXE
    reason = f"No {AXE}: run `npm ci` in tests/e2e to install axe-core for the accessibility check."
    if os.environ.get("CQRS_REQUIRE_E2E") == "1":
        pytest.fail(reason + " CQRS_REQUIRE_E2E=1 requires it.", pytrace=False)
    return None


# Found by these checks and not fixed yet (pages other helpers own); strict, so a fix makes its
# case pass and the mark must go. Key: (path, size) or path for every size.
KNOWN_TRUNCATED = {
    ("", "1024x768"): "Overview: the 'Completion rate' metric label is cut at 1024 px",
    ("workflows", "1024x768"): "Workflows: the 'Export CSV' button label is cut at 1024 px",
    ("statistics", "1024x768"): "Statistics: 'Refresh now' and the CSV download labels are cut at 1024 px",
    (
        "event_explorer",
        "1024x768",
    ): "Event explorer: 'Trace its correlation' / 'Show this stream only' are cut",
    ("system", "1024x768"): "System: the throughput metric labels are cut at 1024 px",
}
# axe-core's serious findings on every page: Streamlit's sidebar navigation puts <div>s in a <ul>
# (list, listitem), and captions in the theme's faded text colour miss the 4.5:1 contrast.
KNOWN_AXE = "Streamlit's sidebar nav list structure and the caption colour's contrast (serious)"


def known(marks: dict, path: str, size: str) -> list:
    reason = marks.get((path, size))
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@pytest.mark.parametrize(
    ("path", "heading", "size"),
    [
        pytest.param(
            path, heading, size, marks=known(KNOWN_TRUNCATED, path, size), id=f"{path or 'overview'}-{size}"
        )
        for path, heading in PAGES
        for size in SIZES
    ],
)
def test_page_fits_and_fetches_nothing_from_outside(console, new_page, path, heading, size):
    page, outside = open_sized(new_page, console, size)
    open_page(page, console.url, path, heading)
    page.wait_for_timeout(1_000)  # live cards and charts draw after the first run
    wait_until_idle(page)
    found = [f"truncated: {t}" for t in page.evaluate(TRUNCATED)]
    table = page.get_by_test_id("stDataFrame").first
    if path in KEY_COLUMN_PAGES:
        box = table.bounding_box()
        assert box is not None, "no table"
        if box["x"] + ui.KEY_COLUMNS_WIDTH_BUDGET > SIZES[size]["width"]:
            found.append(f"the first table's key columns end past the screen's right edge ({box})")
        if box["width"] < ui.KEY_COLUMNS_WIDTH_BUDGET:
            found.append(f"the first table is narrower than the key columns' budget ({box['width']} px)")
    found += [f"request to another host: {url}" for url in sorted(set(outside))]
    assert found == [], json.dumps(found, indent=1)


@pytest.mark.parametrize(
    ("path", "heading"),
    [
        pytest.param(
            path, heading, marks=pytest.mark.xfail(strict=True, reason=KNOWN_AXE), id=path or "overview"
        )
        for path, heading in PAGES
    ],
)
def test_page_has_no_serious_accessibility_violation(console, new_page, axe_script, path, heading):
    if axe_script is None:
        pytest.skip("axe-core is not installed: run `npm ci` in tests/e2e")
    page, _ = open_sized(new_page, console, "1440x900")
    open_page(page, console.url, path, heading)
    wait_until_idle(page)
    violations = axe_violations(page)
    assert violations == [], "\n".join(violations)


def test_a_screenshot_at_1024_px_for_the_readme(console, new_page):
    """docs/screenshots/projections_1024.png: the Projections page as a laptop shows it."""
    page, outside = open_sized(new_page, console, "1024x768")
    open_page(page, console.url, "projections", "Projections")
    page.wait_for_timeout(1_000)
    wait_until_idle(page)
    height = page.evaluate(
        """() => Math.max(768, document.querySelector('[data-testid="stMain"]').scrollHeight)"""
    )
    page.set_viewport_size({"width": 1024, "height": int(height)})
    page.wait_for_timeout(600)
    wait_until_idle(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(
        path=str(SCREENSHOTS / "projections_1024.png"),
        animations="disabled",
        caret="hide",
        style='[data-testid="stToastContainer"], [data-testid="stStatusWidget"] { visibility: hidden !important; }',
    )
    assert outside == []


def test_statistics_views_age_counts_up_while_the_page_is_open(console, new_page):
    page, _ = open_sized(new_page, console, "1440x900")
    open_page(page, console.url, "projections", "Projections")
    views = page.get_by_test_id("stDataFrame").last
    ages = views.get_by_role("gridcell", include_hidden=True).filter(has_text=re.compile(r"^\d+ (s|min)$"))
    expect(ages.first).to_be_attached()
    first = ages.first.inner_text()
    expect(ages.first).not_to_have_text(first, timeout=10_000)


def test_seed_button_comes_back_when_a_seed_ends_and_nothing_covers_the_caption(console, new_page):
    page, _ = open_sized(new_page, console, "1024x768")
    open_page(page, console.url, "demo", "Demo")
    seed = button(page, "Seed")
    seed.click()
    expect(page.get_by_text("Seeding 100 workflows in the background.")).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Seeded 100 workflows with seed "))).to_be_visible(timeout=120_000)
    expect(seed).to_be_enabled(timeout=5_000)  # without a reload
    expect(page.get_by_test_id("stToast")).to_have_count(0)
