"""Fixtures for the journeys in real Chromium: the console served by `streamlit run` as a
subprocess against a database of its own, and one headless Chromium for the whole session.

Chromium comes from the system (/usr/bin/chromium); `playwright install` cannot download
browsers here. Without it the journeys are skipped, unless CQRS_REQUIRE_E2E=1 (CI) says they
must run, in which case they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_processes import stop_process_group
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from streamlit_screen import VIEWPORT

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CQRS_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SERVER_START_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """The Chromium binary, or a skip (a failure under CQRS_REQUIRE_E2E=1) saying why there is none."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = (
        f"No Chromium at {CHROMIUM}: install Debian's `chromium` package (or point CQRS_E2E_CHROMIUM at "
        "one) to run the journeys in a real browser."
    )
    if os.environ.get("CQRS_REQUIRE_E2E") == "1":
        pytest.fail(reason + " CQRS_REQUIRE_E2E=1 requires them.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser(chromium_path):
    """One headless Chromium for the session; every test opens its own context (its own session)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)  # a rerun against PostgreSQL can take a few seconds on a busy runner
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test, so that `new_page` knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def new_page(browser, request, tmp_path):
    """Open a fresh browser context (a new Streamlit session) at 1440x900; closed after the test.
    When the test fails, a screenshot and the HTML of each page are kept in its tmp_path."""
    contexts = []

    def open_new_page(timezone_id: str = "UTC"):
        context = browser.new_context(
            viewport=VIEWPORT, locale="en-GB", timezone_id=timezone_id, accept_downloads=True
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield open_new_page
    failed = getattr(request.node, "report_call", None)
    for number, context in enumerate(contexts):
        if failed is not None and failed.failed:
            for page in context.pages:
                shot = tmp_path / f"failure-{number}.png"
                page.screenshot(path=str(shot), full_page=True)
                (tmp_path / f"failure-{number}.html").write_text(page.content())
                print(f"what the page showed when the test failed: {shot}")
        context.close()


# ---------------------------------------------------------------- databases


@contextmanager
def fresh_database(pg_admin_url: str, template_db: tuple[str, int]) -> Iterator[str]:
    """A fresh migrated database copied from the session template (for fixtures of any scope);
    dropped afterwards, with any connection a server left behind."""
    template, version = template_db
    name = f"cqrs_e2e_{uuid.uuid4().hex[:12]}"
    strategy = " STRATEGY FILE_COPY" if version >= 150000 else ""
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}'))
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---------------------------------------------------------------- the Streamlit server


@dataclass
class StreamlitServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(database_url: str, **settings: str) -> dict[str, str]:
    """This process's environment without any CQRS_ setting of the developer's, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env["CQRS_DATABASE_URL"] = database_url
    for name, value in settings.items():
        env[f"CQRS_{name.upper()}"] = value
    return env


def start_streamlit(cwd: Path, env: dict[str, str], log_path: Path) -> StreamlitServer:
    """`streamlit run app.py` in `cwd` on a free port; returns once /_stcore/health says ok.
    The server runs in a process group of its own so that stopping it takes its children too.
    The file watcher is off: pages edited while the journeys run must not rerun the app."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--browser.gatherUsageStats",
        "false",
    ]
    log = log_path.open("wb")
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    server = StreamlitServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    stop_streamlit(server)
    raise RuntimeError(
        f"streamlit did not report healthy within {SERVER_START_TIMEOUT:.0f} s:\n{server.log_tail()}"
    )


def stop_streamlit(server: StreamlitServer) -> None:
    """Stop the server's process group (Streamlit releases the runtime on the way out)."""
    stop_process_group(server.process)


def app_directory(secrets_toml: str) -> Path:
    """A directory to run a second copy of the app from, with `.streamlit/secrets.toml` of its
    own: app.py and pages/ are symlinks to the repository's, config.toml a copy; the
    repository's .streamlit is never written."""
    root = Path(tempfile.mkdtemp(prefix="cqrs-e2e-app-"))
    (root / "app.py").symlink_to(REPO / "app.py")
    (root / "pages").symlink_to(REPO / "pages", target_is_directory=True)
    (root / ".streamlit").mkdir()
    shutil.copy(REPO / ".streamlit" / "config.toml", root / ".streamlit" / "config.toml")
    (root / ".streamlit" / "secrets.toml").write_text(secrets_toml)
    return root


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("streamlit-logs")


# ---------------------------------------------------------------- the consoles the journeys use

SEED_WORKFLOWS = 200
SEED = 20_260_601


@dataclass
class Console:
    url: str
    database_url: str
    seeded_workflows: int


def seed_demo_data(database_url: str, workflows: int) -> None:
    """Realistic workflows (completed, retried, failed, cancelled, still running) over the last
    90 days (the Statistics page's default range) through the command bus, the read models
    caught up and the statistics views refreshed: every page has something to show at once."""
    from cqrs_core import CQRSServiceBuilder
    from cqrs_core.infra.config import load_settings
    from cqrs_core.tools.workload import runners

    service = (
        CQRSServiceBuilder(load_settings(database_url=database_url))
        .with_database_url(database_url)
        .with_migrations(False)
        .with_rate_limit(1e9, 10**9)
        .with_pool_size(6)
        .build()
    )
    try:
        runners.seed(service, workflows, seed=SEED, days=90, threads=4)
        service.projections.catch_up()
        service.projections.refresh_views()
    finally:
        service.projections.close()  # lets go of the projections' advisory locks for the app
        service.close()


@pytest.fixture(scope="module")
def console(chromium_path, pg_admin_url, template_db, server_logs) -> Iterator[Console]:
    """The console with sign-in off (everyone is the local admin) on a seeded database of its own,
    projections running in the app. The statistics views refresh only when asked (the interval is
    an hour), so a journey can tell a refresh's effect from the scheduler's."""
    with fresh_database(pg_admin_url, template_db) as database_url:
        seed_demo_data(database_url, SEED_WORKFLOWS)
        env = server_env(
            database_url, run_projections="true", view_refresh_seconds="3600", lag_sample_seconds="1"
        )
        server = start_streamlit(REPO, env, server_logs / f"console-{uuid.uuid4().hex[:6]}.log")
        try:
            yield Console(server.url, database_url, SEED_WORKFLOWS)
        finally:
            stop_streamlit(server)


USERS = {"rita": ("researcher", "rita-reads-papers"), "otto": ("operator", "otto-runs-things")}


def secrets_toml(users: dict[str, tuple[str, str]]) -> str:
    """The [users] table of .streamlit/secrets.toml, with fresh bcrypt hashes."""
    import bcrypt

    lines = []
    for name, (role, password) in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines += [f"[users.{name}]", f'password_hash = "{hashed}"', f'role = "{role}"', ""]
    return "\n".join(lines)


@pytest.fixture
def password_console(chromium_path, pg_admin_url, template_db, server_logs) -> Iterator[Console]:
    """The console in password mode (users in USERS) on an empty database of its own, served from
    a directory whose .streamlit/secrets.toml the test wrote."""
    directory = app_directory(secrets_toml(USERS))
    try:
        with fresh_database(pg_admin_url, template_db) as database_url:
            env = server_env(database_url, auth_mode="password", run_projections="true")
            server = start_streamlit(directory, env, server_logs / f"password-{uuid.uuid4().hex[:6]}.log")
            try:
                yield Console(server.url, database_url, 0)
            finally:
                stop_streamlit(server)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def empty_console(chromium_path, pg_admin_url, template_db, server_logs) -> Iterator[Console]:
    """The console with sign-in off on an empty database of its own, projections running in the
    app: a journey plants just the workflows it needs (through the command bus) and the app's
    projections bring them to the read models."""
    with fresh_database(pg_admin_url, template_db) as database_url:
        env = server_env(database_url, run_projections="true")
        server = start_streamlit(REPO, env, server_logs / f"empty-{uuid.uuid4().hex[:6]}.log")
        try:
            yield Console(server.url, database_url, 0)
        finally:
            stop_streamlit(server)
