"""Prometheus metrics (issue 17, part 3): `cqrs-console serve` and its projection worker each
serve /metrics on a port of their own (CQRS_METRICS_PORT, CQRS_WORKER_METRICS_PORT). A real
browser drives the served console (the Demo page's Seed sends commands through the app's command
bus, the pages ask queries), then the endpoints are scraped over HTTP and parsed with
prometheus_client's parser; the Grafana dashboard under deploy/ references only what is exported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from deployment import required_program
from prometheus_client.parser import text_string_to_metric_families
from server_processes import stop_process_group
from test_serve_worker import Launcher
from test_serving import free_port, launcher_env
from waiting import wait_until

from cqrs_core.ops.metrics_export import PROJECTION_STATES
from cqrs_core.projections import PROJECTION_NAMES

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "console-dashboard.json"
CHROMIUM = Path(os.environ.get("CQRS_E2E_CHROMIUM", "/usr/bin/chromium"))
SEED_SIZE = 100  # the Demo page's Small


@pytest.fixture
def serve(tmp_path):
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    ]


def value(exposition: str, name: str, **labels: str) -> float | None:
    found = [v for n, lab, v in samples(exposition) if n == name and labels.items() <= lab.items()]
    return sum(found) if found else None


def drive_the_console(base_url: str) -> None:
    """Seed the Small data set from the Demo page (commands through the app's command bus) and
    open the Overview and Workflows pages (queries), in headless Chromium."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{base_url}/demo")
            expect(page.get_by_role("heading", name="Demo", exact=True)).to_be_visible(timeout=90_000)
            page.get_by_role("button", name="Seed", exact=True).click()
            expect(page.get_by_text(re.compile(rf"^Seeded {SEED_SIZE} workflows with seed "))).to_be_visible(
                timeout=120_000
            )
            for path, heading in (("", "Overview"), ("workflows", "Workflows")):
                page.goto(f"{base_url}/{path}")
                expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible(timeout=60_000)
        finally:
            browser.close()


def dashboard_metric_names() -> set[str]:
    """Every cqrs_ sample name a panel's PromQL uses."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in re.findall(r"\bcqrs_[a-z_]+", expr)}


def need_chromium() -> None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        if os.environ.get("CQRS_REQUIRE_E2E") == "1":
            pytest.fail(f"No Chromium at {CHROMIUM}; CQRS_REQUIRE_E2E=1 requires it.", pytrace=False)
        pytest.skip(f"No Chromium at {CHROMIUM} to drive the served console.")


def served_and_driven(serve: Launcher, db_url: str) -> tuple[int, int]:
    """`serve` with its worker, each with a metrics port, after a browser ran commands and
    queries in it: (the app's metrics port, the worker's)."""
    app_port, worker_port = free_port(), free_port()
    served = serve(
        CQRS_DATABASE_URL=db_url,
        CQRS_PROJECTIONS_IN="worker",
        CQRS_METRICS_PORT=str(app_port),
        CQRS_WORKER_METRICS_PORT=str(worker_port),
        CQRS_VIEW_REFRESH_SECONDS="1",
    )
    # On a thread of its own: Playwright's sync API refuses a thread whose event loop runs (the
    # browser journeys of the same pytest session keep theirs running on this one).
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(drive_the_console, f"http://127.0.0.1:{served.port}").result(timeout=300)
    return app_port, worker_port


def test_served_console_and_worker_export_metrics_that_the_dashboard_uses(serve, db_url):
    need_chromium()
    app_port, worker_port = served_and_driven(serve, db_url)

    app = scrape(app_port)
    # Commands ran in the app process: the histogram has them, by type and outcome.
    commands = value(app, "cqrs_command_duration_seconds_count", outcome="ok")
    assert commands is not None and commands >= SEED_SIZE, app
    assert value(app, "cqrs_command_duration_seconds_bucket", le="+Inf", outcome="ok") == commands
    queries = value(app, "cqrs_query_duration_seconds_count", outcome="ok")
    assert queries is not None and queries > 0
    lookups = value(app, "cqrs_query_cache_lookups_total")
    assert lookups is not None and lookups > 0
    # Each query type looked up has both results from its first lookup (a ratio has a numerator).
    looked_up = {lab["query"] for n, lab, _v in samples(app) if n == "cqrs_query_cache_lookups_total"}
    for query in looked_up:
        assert value(app, "cqrs_query_cache_lookups_total", query=query, result="hit") is not None

    # Per projection, read from the database at scrape time; the worker catches up and says so.
    def caught_up(exposition: str) -> bool:
        return value(exposition, "cqrs_projection_metrics_up") == 1 and all(
            value(exposition, "cqrs_projection_lag_events", projection=name) == 0
            and value(exposition, "cqrs_projection_position", projection=name)
            == value(exposition, "cqrs_projection_head_position", projection=name)
            for name in PROJECTION_NAMES
        )

    wait_until(lambda: caught_up(scrape(app_port)), 60, "the app's gauges to show the projections caught up")
    wait_until(lambda: caught_up(scrape(worker_port)), 30, "the worker's gauges to agree")
    worker = scrape(worker_port)
    for name in PROJECTION_NAMES:
        assert value(worker, "cqrs_projection_parked_events", projection=name) == 0
        states = {
            s: value(worker, "cqrs_projection_state", projection=name, state=s) for s in PROJECTION_STATES
        }
        assert sum(v or 0 for v in states.values()) == 1, states
        assert states["running"] == 1 or states["catching_up"] == 1, states
    wait_until(
        lambda: value(scrape(worker_port), "cqrs_view_age_seconds") is not None,
        30,
        "a statistics view to be refreshed and its age exported",
    )
    app = scrape(app_port)

    exported = {name for name, _labels, _v in samples(app)}
    missing = dashboard_metric_names() - exported
    assert not missing, f"the dashboard uses metrics the console does not export: {sorted(missing)}"


def test_a_metrics_port_in_use_is_one_line_and_nothing_starts(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cqrs_core", "serve", "--server.port", str(free_port())],
            cwd=tmp_path,
            env=launcher_env(tmp_path, CQRS_METRICS_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cqrs-console: Cannot serve metrics on 127.0.0.1 port {port} (the port is in use or reserved): "
        "choose another with CQRS_METRICS_PORT, or an address of this machine with CQRS_METRICS_ADDRESS."
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_promtool_accepts_the_exposition_and_every_dashboard_panel_has_series_in_prometheus(
    serve, db_url, tmp_path
):
    need_chromium()
    promtool = required_program("promtool", "prometheus", "CQRS_REQUIRE_INFRA")
    prometheus = required_program("prometheus", "prometheus", "CQRS_REQUIRE_INFRA")
    app_port, worker_port = served_and_driven(serve, db_url)
    wait_until(
        lambda: value(scrape(worker_port), "cqrs_view_age_seconds") is not None,
        60,
        "a statistics view to be refreshed and its age exported",
    )

    for port in (app_port, worker_port):
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=scrape(port), capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout + checked.stderr == "", checked.stdout + checked.stderr  # no lint warnings

    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: cqrs-console\n    static_configs:\n"
        f'      - targets: ["127.0.0.1:{app_port}", "127.0.0.1:{worker_port}"]\n'
    )
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        exprs = {
            panel["title"]: target["expr"]
            for panel in json.loads(DASHBOARD.read_text())["panels"]
            for target in panel["targets"]
        }

        def series(expr: str) -> list:
            url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                return []
            assert answer["status"] == "success", answer
            return answer["data"]["result"]

        def panels_without_series() -> list[str]:
            return [title for title, expr in exprs.items() if not series(expr)]

        deadline = time.monotonic() + 60
        while (empty := panels_without_series()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not empty, (
            f"panels without a series: {empty}\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}"
        )
        up = series('up{job="cqrs-console"}')
        assert sorted(float(s["value"][1]) for s in up) == [1.0, 1.0], up
    finally:
        stop_process_group(server)
        log.close()


def test_projection_gauges_say_up_0_when_the_database_does_not_answer():
    from prometheus_client import generate_latest

    from cqrs_core.infra.config import load_settings
    from cqrs_core.infra.db import make_engine
    from cqrs_core.ops.metrics_export import metrics_registry
    from cqrs_core.projections import ProjectionManager

    unreachable = make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere", pool_size=1)
    manager = ProjectionManager(unreachable, load_settings())
    try:
        for source in (lambda: manager, lambda: None):  # a dead database; a runtime not open yet
            exposition = generate_latest(metrics_registry(source)).decode()
            assert value(exposition, "cqrs_projection_metrics_up") == 0
            assert value(exposition, "cqrs_projection_lag_events") is None
            assert value(exposition, "process_cpu_seconds_total") is not None  # the rest is served
    finally:
        manager.close(timeout=5)
        unreachable.dispose()


def test_the_supervised_worker_gets_its_own_metrics_port_or_none(monkeypatch):
    """The worker `serve` starts inherits this environment: CQRS_METRICS_PORT is the app's, so
    the child must not try to bind it too (it would exit and be restarted forever)."""
    from cqrs_core.cli.serve import worker_env
    from cqrs_core.infra.config import load_settings

    monkeypatch.setenv("CQRS_METRICS_PORT", "9464")
    monkeypatch.delenv("CQRS_WORKER_METRICS_PORT", raising=False)
    env = worker_env(load_settings())
    assert "CQRS_METRICS_PORT" not in env
    assert env["PATH"] == os.environ["PATH"]

    monkeypatch.setenv("CQRS_WORKER_METRICS_PORT", "9465")
    assert worker_env(load_settings())["CQRS_METRICS_PORT"] == "9465"
