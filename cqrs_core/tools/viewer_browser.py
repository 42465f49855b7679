"""Viewers of the console in real headless Chromium, for `bench-viewers`.

One browser process; every viewer has its own browser context (its own cookies, so its own
Streamlit session). A viewer's time to data is measured in the page itself: a script added to
every document of the context checks every 50 ms whether the page shows its data (the markers
below) and keeps `performance.now()` at that moment, which counts from the navigation's start.
Navigations are started without waiting for them, so viewers open on schedule however slowly the
server answers, and each one's figure is read back later.

When the pages change what they draw, `DATA_MARKERS` is the one place to follow them.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cqrs_core.infra.errors import CQRSError

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; `playwright install` cannot download browsers here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}

# The page mix, in the order viewers are given them (round-robin), with each page's URL path.
PAGES = ("Overview", "Projections", "Workflows", "Statistics")
PAGE_PATHS = {
    "Overview": "",
    "Projections": "projections",
    "Workflows": "workflows",
    "Statistics": "statistics",
}

# What "shows its data" means per page: (said in the report, checked in the page over stMain).
# Each marker appears only once the page's queries have answered and their result is drawn.
DATA_MARKERS = {
    "Overview": (
        "the Workflows KPI shows a number and the health table has rows",
        "metric(r, 'Workflows') && gridRows(r)",
    ),
    "Projections": (
        "the Head position KPI shows a number and the lag chart is drawn",
        "metric(r, 'Head position') && /samples \\u00b7 newest/.test(text(r)) && chartsDrawn(r)",
    ),
    "Workflows": (
        "the 'first–last of N workflows' line and the table's rows are shown",
        "/\\d[\\d,]*\\u2013[\\d,]+ of [\\d,]+ workflows/.test(text(r)) && gridRows(r)",
    ),
    "Statistics": (
        "the last chart's view caption is shown and every chart is drawn",
        "text(r).includes('From the view stats_assignee_load') && chartsDrawn(r)",
    ),
}

# The stages of a visit measured in the page, as (report name: the watch script's key).
STAGES = {"html": "html", "connected": "connected", "run started": "started", "run done": "done"}

_WATCH_SCRIPT = """
(() => {
  if (window.top !== window || !location.protocol.startsWith("http") || window.__viewerBench) return;
  const state = window.__viewerBench = {
    ready: null, error: null, seen: "nothing drawn", html: null, connected: null, started: null,
    done: null,
  };
  const text = (el) => (el && el.textContent) || "";
  const metric = (r, label) => [...r.querySelectorAll('[data-testid="stMetric"]')].some((m) =>
    text(m.querySelector('[data-testid="stMetricLabel"]')).includes(label) &&
    /\\d/.test(text(m.querySelector('[data-testid="stMetricValue"]'))));
  const gridRows = (r) => r.querySelector('[data-testid="stDataFrame"] [role="gridcell"]') !== null;
  const chartsDrawn = (r) => {
    const charts = [...r.querySelectorAll('[data-testid="stPlotlyChart"], [data-testid="stVegaLiteChart"]')];
    return charts.length > 0 && charts.every((c) => c.querySelector("svg, canvas") !== null);
  };
  const shown = (r) => (__CHECK__);
  const timer = setInterval(() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (app) {
      const connection = app.getAttribute("data-test-connection-state");
      const script = app.getAttribute("data-test-script-state");
      state.seen = connection !== "CONNECTED" ? `not connected (${connection})`
        : script === "initial" ? "no run started"
        : script === "running" || script === "rerunRequested" ? "script running"
        : script === "notRunning" ? "run done without the data" : `script ${script}`;
      // The stages of a visit, for what bounds the time to data: the socket up (the JS bundle
      // loaded and ran), then the first script run started on the server.
      if (connection === "CONNECTED" && state.connected === null) state.connected = performance.now();
      if (script !== "initial" && state.connected !== null && state.started === null)
        state.started = performance.now();
      if (script === "notRunning" && state.started !== null && state.done === null)
        state.done = performance.now();
    }
    const r = document.querySelector('[data-testid="stMain"]');
    if (!r) return;
    const failure = r.querySelector('[data-testid="stException"]');
    if (failure && !state.error) state.error = text(failure).slice(0, 200);
    if (shown(r)) {
      state.ready = performance.now();
      const nav = performance.getEntriesByType("navigation")[0];
      state.html = nav ? nav.responseEnd : null;
      clearInterval(timer);
    }
  }, 50);
})();
"""


class BenchProblem(CQRSError):
    """Something the person running the benchmark has to act on; carries one line."""

    category = "configuration"
    default_message = "The benchmark could not run."


def browser_problem(chromium: Path) -> str | None:
    """Why no viewer can be opened (no Chromium, no Playwright), or None."""
    if not (chromium.is_file() and os.access(chromium, os.X_OK)):
        return (
            f"No Chromium at {chromium}: install Debian's `chromium` package (apt-get install chromium) "
            "or name one with --chromium."
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: install the development tools (`make install-dev`)."
    return None


@dataclass
class Viewer:
    """One open tab: its page, and when its navigation was asked for (time.monotonic)."""

    page_name: str
    context: Any
    page: Any
    opened_at: float
    ready_seconds: float | None = None
    # The stages before it (seconds from the navigation's start): the page's HTML received, the
    # WebSocket connected (the JS bundle loaded and ran), the first script run started and ended
    # (the data can be drawn after the run ends: the browser still lays out and draws it).
    stages: dict[str, float] | None = None
    error: str | None = None
    seen: str = "nothing drawn"  # what it showed instead of its data: connection and script state
    main_text: str | None = None  # the start of what the page showed, when it timed out
    closed: bool = False

    def poll(self) -> bool:
        """Read the in-page measurement; True once the page has shown its data."""
        if self.ready_seconds is not None or self.closed:
            return self.ready_seconds is not None
        from playwright.sync_api import Error as PlaywrightError

        try:
            state = self.page.evaluate("() => window.__viewerBench || null")
        except PlaywrightError:
            return False  # between documents, or the renderer is busy navigating: read it next time
        if state:
            self.error = self.error or state.get("error")
            self.seen = state.get("seen") or self.seen
            if state.get("ready") is not None:
                self.ready_seconds = float(state["ready"]) / 1000
                self.stages = {
                    stage: float(state[key]) / 1000
                    for stage, key in STAGES.items()
                    if state.get(key) is not None
                }
        return self.ready_seconds is not None

    def read_main_text(self) -> None:
        """Keep the start of the page's text (for a viewer that gave up: what did it show?)."""
        from playwright.sync_api import Error as PlaywrightError

        with contextlib.suppress(PlaywrightError):
            self.main_text = self.page.evaluate(
                "() => (document.querySelector('[data-testid=\"stMain\"]') || document.body)"
                ".innerText.replace(/\\s+/g, ' ').slice(0, 300)"
            )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.context.close()


class Viewers:
    """The browser and every viewer opened in it."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url.rstrip("/")
        self.open_viewers: list[Viewer] = []

    def open(self, page_name: str) -> Viewer:
        """A new browser context on `page_name`; the navigation starts now and is not waited for."""
        context = self.browser.new_context(viewport=VIEWPORT, locale="en-GB", timezone_id="UTC")
        context.set_default_timeout(30_000)
        context.add_init_script(_WATCH_SCRIPT.replace("__CHECK__", DATA_MARKERS[page_name][1]))
        page = context.new_page()
        url = f"{self.base_url}/{PAGE_PATHS[page_name]}"
        opened = time.monotonic()
        page.evaluate("(url) => { window.location.assign(url); }", url)
        viewer = Viewer(page_name, context, page, opened)
        self.open_viewers.append(viewer)
        return viewer

    def wait_for_data(self, viewers: list[Viewer], timeout: float) -> None:
        """Until every one of `viewers` has shown its data, or `timeout` seconds after it was opened."""
        waiting = [v for v in viewers if not v.poll()]
        while waiting:
            now = time.monotonic()
            still = []
            for v in waiting:
                if v.poll():
                    continue
                if now - v.opened_at < timeout:
                    still.append(v)
                else:
                    v.read_main_text()
            waiting = still
            if waiting:
                waiting[0].page.wait_for_timeout(250)  # lets Playwright dispatch while it waits

    def close_all(self) -> None:
        for viewer in self.open_viewers:
            viewer.close()


@contextmanager
def chromium_viewers(base_url: str, chromium: Path, cpus: set[int] | None) -> Iterator[Viewers]:
    """Launch one headless Chromium (pinned to `cpus` when given: the Playwright driver and the
    browser inherit the affinity of the thread that starts them, and so does every renderer the
    browser forks later) and yield the `Viewers` over it; everything is closed on the way out."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    own = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        playwright = sync_playwright().start()
        try:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            playwright.stop()
            raise BenchProblem(f"Chromium at {chromium} did not start: {_launch_failure(str(exc))}") from exc
    finally:
        if cpus:
            os.sched_setaffinity(0, own)
    viewers = Viewers(browser, base_url)
    try:
        yield viewers
    finally:
        # After Ctrl-C the driver may be gone already (it shares the terminal's process group):
        # closing then fails, and must not hide the interrupt.
        with contextlib.suppress(PlaywrightError):
            viewers.close_all()
            browser.close()
        with contextlib.suppress(PlaywrightError):
            playwright.stop()


def _launch_failure(message: str) -> str:
    """The line of Playwright's launch error that says why: Chromium's own FATAL line when there
    is one (its socket path too long, a missing library), else the error's first line."""
    found = re.search(r"FATAL:[^\]]*\] (.+)", message)
    if found:
        return found.group(1).strip()
    lines = message.strip().splitlines()
    return lines[0] if lines else "no reason given"
