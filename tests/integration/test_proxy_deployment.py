"""More than one app process (issue 14): two `cqrs-console serve` processes on one PostgreSQL
database, sharing one `server.cookieSecret`, behind a real HAProxy running deploy/haproxy.cfg
itself, and real Chromium talking to the proxy over TLS.

The shipped file is rendered, not copied: its ports and certificate path become this test's, the
privilege drop (`user`, `group`, `chroot`) goes (the test runs HAProxy as the test's own user),
and for the idle check the client and tunnel timeouts become IDLE_TIMEOUT. Every piece the
rendering replaces must be in the file exactly once, so a changed file fails here rather than
being tested half.

Chromium runs in a thread of its own: Playwright's sync API refuses a thread whose event loop
runs, and the browser journeys of the same session (tests/e2e) keep theirs running in this one.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from server_processes import stop_process_group
from services import build_service
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from test_serving import free_port
from waiting import wait_until

from cqrs_core import CommandFactory
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.projections.engine.locks import RUNNER_NAMESPACE, lock_key
from cqrs_core.tools.viewer_browser import CHROMIUM_ARGS  # the flags every browser here needs

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "haproxy.cfg"
CHROMIUM = Path(os.environ.get("CQRS_E2E_CHROMIUM", "/usr/bin/chromium"))
IDLE_TIMEOUT = "3s"  # the proxy's client and tunnel timeouts in the idle check
FRESH_SESSIONS = 4
START_TIMEOUT = 60.0
USER, PASSWORD = "rita", "rita-reads-papers"
SERVED_BY = re.compile(r"^Served by (.+) · pid (\d+)$")
SEEDED = {  # title: research question; the titles carry CSV's own delimiters
    'Proxy alpha: soil, "wet" samples': "Does moisture change the count?",
    "Proxy bravo: river sediment": "Where does the sediment settle?",
    "Proxy charlie: leaf litter": "How fast does it decay?",
    "Proxy delta: moss, lichens": "Which grows back first?",
    "Proxy echo: pond water": "What lives in it?",
}


# ---------------------------------------------------------------- what the test needs installed


def required_program(name: str, package: str, switch: str) -> str:
    """The path of `name`, or a skip saying which Debian package provides it (a failure when the
    environment variable `switch` is 1, as .ci/run sets it: CI installs the package)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found:
        return found
    reason = f"No `{name}` found: install Debian's `{package}` package."
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason} {switch}=1 requires it.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get("CQRS_REQUIRE_E2E") == "1":
        pytest.fail(f"No Chromium at {CHROMIUM}; CQRS_REQUIRE_E2E=1 requires it.", pytrace=False)
    pytest.skip(f"No Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def haproxy() -> str:
    return required_program("haproxy", "haproxy", "CQRS_REQUIRE_INFRA")


@pytest.fixture(scope="module")
def openssl() -> str:
    return required_program("openssl", "openssl", "CQRS_REQUIRE_INFRA")


# ---------------------------------------------------------------- the proxy's configuration


def render_config(
    template: str, *, http_port: int, https_port: int, pem: Path, app_ports: list[int], idle: bool
) -> str:
    """deploy/haproxy.cfg with this test's ports and certificate; with `idle`, IDLE_TIMEOUT for the
    client and tunnel timeouts."""
    replacements = [
        ("    user haproxy\n", ""),
        ("    group haproxy\n", ""),
        ("    chroot /var/lib/haproxy\n", ""),
        ("    bind :80\n", f"    bind 127.0.0.1:{http_port}\n"),
        (
            "    bind :443 ssl crt /etc/haproxy/certs/console.pem ",
            f"    bind 127.0.0.1:{https_port} ssl crt {pem} ",
        ),
        ("    server app1 127.0.0.1:8501 ", f"    server app1 127.0.0.1:{app_ports[0]} "),
        ("    server app2 127.0.0.1:8502 ", f"    server app2 127.0.0.1:{app_ports[1]} "),
    ]
    if idle:
        replacements += [
            ("    timeout client 30s\n", f"    timeout client {IDLE_TIMEOUT}\n"),
            ("    timeout tunnel 1h\n", f"    timeout tunnel {IDLE_TIMEOUT}\n"),
        ]
    for old, new in replacements:
        assert template.count(old) == 1, f"{CONFIG} no longer has {old!r} once: update the rendering here"
        template = template.replace(old, new)
    return template


# ---------------------------------------------------------------- the deployment


@dataclass
class Deployment:
    url: str  # https://127.0.0.1:<port> of the proxy
    http_url: str  # its plain-HTTP port, which only redirects
    database_url: str
    app_pids: list[int]
    logs: Path
    restart_proxy: Callable[[bool], None]  # stop HAProxy (every connection drops), start it again (idle?)


@contextmanager
def database(pg_admin_url: str) -> Iterator[str]:
    """An empty database of its own (migrated by the deployment, as docs/DEPLOY.md says)."""
    name = f"cqrs_proxy_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(database_url: str) -> None:
    """The SEEDED workflows through the service API, projected into the read models."""
    service = build_service(database_url)
    try:
        factory = CommandFactory(USER, role="researcher")
        for title, question in SEEDED.items():
            service.execute_command(
                factory.create_research_workflow(
                    title=title, research_question=question, methodology="exploratory"
                )
            )
        service.projections.catch_up()
    finally:
        service.projections.close()  # lets go of the projections' advisory locks for the app processes
        service.close()


def console_env(home: Path, database_url: str, cookie_secret: str) -> dict[str, str]:
    """The environment docs/DEPLOY.md gives every console process (nothing of the developer's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CQRS_", "STREAMLIT_", "FORWARDED_"))}
    env.update(
        HOME=str(home),
        CQRS_DATA_DIR=str(home / "data"),
        CQRS_DATABASE_URL=database_url,
        CQRS_AUTH_MODE="password",
        CQRS_TRUSTED_PROXIES="127.0.0.1",
        STREAMLIT_SERVER_COOKIE_SECRET=cookie_secret,
        STREAMLIT_SERVER_HEADLESS="true",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
        STREAMLIT_SERVER_FILE_WATCHER_TYPE="none",
    )
    return env


def started(command: list[str], cwd: Path, env: dict[str, str] | None, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def certificate(openssl: str, directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1: (HAProxy's PEM: chain then key, the CA file)."""
    key, crt = directory / "key.pem", directory / "crt.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pem = directory / "console.pem"
    pem.write_text(crt.read_text() + key.read_text())
    pem.chmod(0o600)
    return pem, crt


def app_health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


def proxy_health(url: str, cafile: Path) -> bool:
    """True when the proxy answers Streamlit's health endpoint with "ok" (certificate checked)."""
    try:
        context = ssl.create_default_context(cafile=str(cafile))
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2, context=context) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


@pytest.fixture(scope="module")
def deployment(
    pg_admin_url, template_db, haproxy, openssl, chromium, tmp_path_factory
) -> Iterator[Deployment]:
    """The console as docs/DEPLOY.md runs it for a team: one database migrated once, two
    `cqrs-console serve` processes (sign-in on, one cookie secret, the proxy trusted), HAProxy in
    front. Every process started here is stopped afterwards, whatever happened."""
    root = tmp_path_factory.mktemp("proxy")
    logs = root / "logs"
    logs.mkdir()
    (root / ".streamlit").mkdir()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (root / ".streamlit" / "secrets.toml").write_text(
        f'[users.{USER}]\npassword_hash = "{hashed}"\nrole = "researcher"\n'
    )
    with ExitStack() as stack:
        database_url = stack.enter_context(database(pg_admin_url))
        env = console_env(root, database_url, cookie_secret=uuid.uuid4().hex + uuid.uuid4().hex)
        migrate = subprocess.run(
            [sys.executable, "-m", "cqrs_core", "migrate"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        seed(database_url)

        app_ports = [free_port(), free_port()]
        apps = []
        for number, port in enumerate(app_ports, 1):
            command = [sys.executable, "-m", "cqrs_core", "serve", "--server.address", "127.0.0.1"]
            app = started([*command, "--server.port", str(port)], root, env, logs / f"app{number}.log")
            stack.callback(stop_process_group, app)
            apps.append(app)
        for number, (app, port) in enumerate(zip(apps, app_ports, strict=True), 1):

            def healthy(app: subprocess.Popen = app, port: int = port, number: int = number) -> bool:
                if app.poll() is not None:
                    log = (logs / f"app{number}.log").read_text(errors="replace")
                    pytest.fail(f"app {number} exited with {app.returncode}:\n{log[-3000:]}", pytrace=False)
                return app_health(port)

            wait_until(healthy, START_TIMEOUT, f"app process {number} to answer on port {port}", interval=0.2)

        pem, cafile = certificate(openssl, root)
        http_port, https_port = free_port(), free_port()
        url = f"https://127.0.0.1:{https_port}"
        template = CONFIG.read_text()
        proxy: list[subprocess.Popen] = []

        def start_proxy(idle: bool) -> None:
            config = root / ("haproxy-idle.cfg" if idle else "haproxy.cfg")
            config.write_text(
                render_config(
                    template,
                    http_port=http_port,
                    https_port=https_port,
                    pem=pem,
                    app_ports=app_ports,
                    idle=idle,
                )
            )
            check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
            process = started([haproxy, "-f", str(config), "-db"], root, None, logs / "haproxy.log")
            proxy.append(process)

            def up() -> bool:
                if process.poll() is not None:
                    log = (logs / "haproxy.log").read_text(errors="replace")
                    pytest.fail(f"haproxy exited with {process.returncode}:\n{log[-3000:]}", pytrace=False)
                return proxy_health(url, cafile)

            wait_until(up, START_TIMEOUT, f"HAProxy to answer at {url}", interval=0.1)

        def restart_proxy(idle: bool) -> None:
            stop_process_group(proxy[-1])  # SIGTERM: HAProxy's hard stop closes every connection now
            start_proxy(idle)

        stack.callback(lambda: [stop_process_group(p) for p in proxy])
        start_proxy(idle=False)
        print(f"logs of the deployment: {logs}")
        yield Deployment(
            url=url,
            http_url=f"http://127.0.0.1:{http_port}",
            database_url=database_url,
            app_pids=[app.pid for app in apps],
            logs=logs,
            restart_proxy=restart_proxy,
        )
    for process in [*apps, *proxy]:
        assert process.poll() is not None, f"process {process.args} is still running"


# ---------------------------------------------------------------- Chromium in a thread of its own


@pytest.fixture(scope="module")
def in_browser(chromium) -> Iterator[Callable[..., Any]]:
    """`in_browser(scenario, *args)`: run `scenario(browser, *args)` on the one thread that owns
    this module's Chromium, and return what it returns (or raise what it raised)."""
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
    owned: dict[str, Any] = {}

    def launch() -> None:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=20_000)
        owned["playwright"] = sync_playwright().start()
        owned["browser"] = owned["playwright"].chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )

    def close() -> None:
        if "browser" in owned:
            owned["browser"].close()
        if "playwright" in owned:
            owned["playwright"].stop()

    try:
        thread.submit(launch).result(timeout=120)
        yield lambda scenario, *args: thread.submit(scenario, owned["browser"], *args).result(timeout=240)
    finally:
        thread.submit(close).result(timeout=60)
        thread.shutdown()


# ---------------------------------------------------------------- what a person does in the browser


def new_context(browser: Any, **options: Any) -> Any:
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True, **options)
    context.set_default_timeout(20_000)
    return context


def wait_until_idle(page: Any) -> None:
    """Until the run a click or key press asked for has finished (Streamlit's script state)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(150)
    expect(page.get_by_test_id("stApp")).to_have_attribute(
        "data-test-script-state", "notRunning", timeout=30_000
    )


def served_by(page: Any) -> int:
    """The pid of the app process the sidebar says drew the page (its host is this machine's)."""
    from playwright.sync_api import expect

    caption = page.get_by_test_id("stSidebar").get_by_text(SERVED_BY)
    expect(caption).to_be_visible()
    shown = caption.inner_text().strip()
    match = SERVED_BY.match(shown)
    assert match is not None and match.group(1) == socket.gethostname(), shown
    return int(match.group(2))


def open_and_sign_in(context: Any, url: str, path: str = "") -> Any:
    """A page of `context` at `url`/`path`, signed in; returns the page."""
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(f"{url}/{path}")
    page.get_by_label("User name").fill(USER, timeout=60_000)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    wait_until_idle(page)
    return page


def export_csv(page: Any, logs: Path) -> list[dict[str, str]]:
    """Click the Workflows page's Export CSV and read the file the browser saved."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        with page.expect_download() as download:
            page.get_by_role("button", name="Export CSV", exact=True).click()
    except PlaywrightTimeout:
        lost = [
            line
            for log in sorted(logs.glob("app*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if "Deferred file" in line
        ]
        raise AssertionError(f"no file came; the app processes logged: {lost}") from None
    path = download.value.path()
    return list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8"))))


def expect_only(page: Any, title: str) -> None:
    """Until the list shows the one workflow `title` (from the table's accessible copy of its cells)."""
    from playwright.sync_api import expect

    expect(page.get_by_text(re.compile(r"^1–1 of 1 workflows"))).to_be_visible()
    for other in SEEDED:
        cell = page.get_by_role("gridcell", name=other, exact=True, include_hidden=True)
        expect(cell).to_have_count(1 if other == title else 0)


@contextmanager
def evidence_on_failure(pages: list[Any], directory: Path) -> Iterator[None]:
    """Keep a screenshot and the HTML of each page when the block fails."""
    try:
        yield
    except BaseException:
        for number, page in enumerate(pages):
            try:
                page.screenshot(path=str(directory / f"failure-{number}.png"), full_page=True)
                (directory / f"failure-{number}.html").write_text(page.content())
            except Exception:  # the page may be gone; the failure itself matters more
                pass
        print(f"what the pages showed: {directory}")
        raise


@dataclass
class Sessions:
    """Fresh browser contexts, each signed in on the Workflows page, in the order they opened."""

    pages: list[Any]
    landed: list[int]  # the pid of the app process each one landed on
    cookies: list[dict[str, Any]]  # the first context's cookies

    def on(self, pid: int) -> Any:
        return self.pages[self.landed.index(pid)]


@pytest.fixture(scope="module")
def sessions(deployment, in_browser, tmp_path_factory) -> Iterator[Sessions]:
    """FRESH_SESSIONS contexts, kept open (each holds its WebSocket) for the tests that follow."""
    evidence = tmp_path_factory.mktemp("sessions")
    contexts: list[Any] = []

    def open_sessions(browser: Any) -> Sessions:
        pages: list[Any] = []
        with evidence_on_failure(pages, evidence):
            for _ in range(FRESH_SESSIONS):
                contexts.append(new_context(browser))
                pages.append(open_and_sign_in(contexts[-1], deployment.url, "workflows"))
            return Sessions(pages, [served_by(page) for page in pages], contexts[0].cookies())

    def close(browser: Any) -> None:
        for context in contexts:
            context.close()

    try:
        yield in_browser(open_sessions)
    finally:
        in_browser(close)


# ---------------------------------------------------------------- the tests


def test_fresh_sessions_land_on_both_processes_and_stay_on_theirs(deployment, sessions, in_browser, tmp_path):
    assert set(sessions.landed) == set(deployment.app_pids), (sessions.landed, deployment.app_pids)

    def navigate(browser: Any) -> list[int]:
        page = sessions.pages[0]
        seen = []
        with evidence_on_failure([page], tmp_path):
            for link in ("Overview", "Workflows"):
                page.locator(".st-key-console_nav").get_by_role("link", name=link, exact=True).click()
                page.get_by_role("heading", name=link, exact=True).wait_for()
                wait_until_idle(page)
                seen.append(served_by(page))
        return seen

    assert in_browser(navigate) == [sessions.landed[0]] * 2  # a session stays on the process it started on
    cookies = sessions.cookies
    sticky = [c for c in cookies if c["name"] == "SRV"]
    assert len(sticky) == 1 and sticky[0]["value"] in ("app1", "app2"), cookies
    assert sticky[0]["httpOnly"] and sticky[0]["sameSite"] == "Lax"
    assert {c["name"] for c in cookies} >= {"SRV", "_streamlit_xsrf"}
    assert all(c["secure"] for c in cookies), cookies  # TLS at the proxy: every cookie is Secure


def test_each_projection_has_one_runner_across_the_app_processes(deployment, sessions):
    """Both processes run projections (the default) since their first page; the advisory locks
    give each projection exactly one runner."""
    assert set(sessions.landed) == set(deployment.app_pids)
    one_each = {lock_key(name): 1 for name in PROJECTION_NAMES}
    engine = create_engine(deployment.database_url, poolclass=NullPool)

    def runners() -> dict[int, int]:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT objid::bigint AS key, count(*) AS sessions FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND classid = :ns AND objsubid = 2 "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "GROUP BY objid"
                ),
                {"ns": RUNNER_NAMESPACE},
            ).all()
        return {row.key: row.sessions for row in rows}

    try:
        wait_until(lambda: runners() == one_each, 30, "one runner per projection", interval=0.2)
    finally:
        engine.dispose()


def test_the_proxy_names_the_client_whatever_x_forwarded_for_the_browser_sends(
    deployment, in_browser, tmp_path
):
    """The sign-in throttle counts failures per client. The processes believe X-Forwarded-For
    from the proxy only, and the proxy replaces what the browser sent with the real peer (here
    this machine: "localhost" to the throttle), so a forged header names nobody."""

    def scenario(browser: Any) -> None:
        from playwright.sync_api import expect

        context = new_context(browser, extra_http_headers={"X-Forwarded-For": "203.0.113.9"})
        page = context.new_page()
        try:
            with evidence_on_failure([page], tmp_path):
                page.goto(deployment.url)
                page.get_by_label("User name").fill(USER, timeout=60_000)
                page.get_by_label("Password", exact=True).fill("not-her-password")
                page.get_by_role("button", name="Sign in", exact=True).click()
                expect(page.get_by_text("Unknown user name or wrong password.")).to_be_visible()
        finally:
            context.close()

    in_browser(scenario)
    engine = create_engine(deployment.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            clients = conn.execute(text("SELECT DISTINCT client FROM sign_in_throttle")).scalars().all()
    finally:
        engine.dispose()
    assert clients == ["localhost"]


def test_twenty_csv_downloads_through_the_proxy_all_succeed(deployment, sessions, in_browser, tmp_path):
    """Every session clicks Export CSV in turn until 20 files came, each with the seeded rows.
    The file is built in the process that holds the session and kept in its memory, so a request
    that reached the other process would fail. (Before the button stopped rerunning the page,
    Streamlit 1.67 lost the file for about one click in ten, with or without a proxy: the rerun
    replaced the callable the click asked for, or dropped its answer.)"""

    def scenario(browser: Any) -> list[tuple[int, list[dict[str, str]]]]:
        files: list[tuple[int, list[dict[str, str]]]] = []
        with evidence_on_failure(sessions.pages, tmp_path):
            while len(files) < 20:
                for pid, page in zip(sessions.landed, sessions.pages, strict=True):
                    if len(files) < 20:
                        wait_until_idle(page)
                        files.append((pid, export_csv(page, deployment.logs)))
        return files

    files = in_browser(scenario)

    assert len(files) == 20 and {pid for pid, _ in files} == set(deployment.app_pids)
    for _, rows in files:
        assert sorted((r["title"], r["research_question"]) for r in rows) == sorted(SEEDED.items())


def test_a_dropped_websocket_and_an_idle_session_keep_their_state(deployment, sessions, in_browser, tmp_path):
    """The proxy is restarted under a signed-in session with a search typed in (its WebSocket
    drops), then the session is left idle past the proxy's timeouts (its WebSocket is cut
    again): each time the tab reconnects to the same process and session, still signed in, the
    search still there, and the page still answers."""
    page = sessions.pages[0]

    def scenario(browser: Any) -> list[str]:
        from playwright.sync_api import expect

        with evidence_on_failure([page], tmp_path):
            pid = served_by(page)
            search = page.get_by_role("textbox", name="Search", exact=True)
            search.fill("bravo")
            search.press("Enter")
            expect_only(page, "Proxy bravo: river sediment")
            wait_until_idle(page)
            sockets: list[Any] = []
            page.on("websocket", lambda socket: sockets.append(socket))

            def still_the_same_session() -> None:
                expect(page.get_by_role("button", name="Sign out")).to_be_visible()
                expect(search).to_have_value("bravo")
                expect_only(page, "Proxy bravo: river sediment")
                assert served_by(page) == pid

            # The proxy goes away and comes back (with the short idle timeouts from now on).
            with page.expect_websocket(timeout=60_000):
                deployment.restart_proxy(True)
            wait_until_idle(page)
            still_the_same_session()
            assert [r["title"] for r in export_csv(page, deployment.logs)] == ["Proxy bravo: river sediment"]

            # Nothing happens for longer than the proxy's client and tunnel timeouts: it cuts the
            # quiet WebSocket and the tab opens a new one (a bounded wait, not a sleep).
            opened = len(sockets)
            with page.expect_websocket(timeout=30_000):
                pass
            assert len(sockets) > opened
            wait_until_idle(page)
            still_the_same_session()
            search.fill("delta")
            search.press("Enter")
            expect_only(page, "Proxy delta: moss, lichens")  # not the list of the search before
            wait_until_idle(page)
            return [r["title"] for r in export_csv(page, deployment.logs)]

    assert in_browser(scenario) == ["Proxy delta: moss, lichens"]
    # It was the proxy's idle timeout that cut it: HAProxy logs a WebSocket that ended with
    # "cD" (the client side timed out while data could flow).
    streams = [
        line
        for line in (deployment.logs / "haproxy.log").read_text().splitlines()
        if "/_stcore/stream " in line
    ]
    assert any(" cD" in line for line in streams), streams[-6:]


def test_plain_http_only_redirects_to_https(deployment):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(f"{deployment.http_url}/workflows", timeout=10)
    assert answer.value.code == 301
    assert answer.value.headers["Location"].startswith("https://127.0.0.1:")
    assert answer.value.headers["Location"].endswith("/workflows")


def test_a_signed_in_user_stays_signed_in_on_reload_new_tab_and_the_other_process(
    deployment, sessions, in_browser, tmp_path
):
    """The session cookie (issue 15, item 13): set by the process the browser signed in on, it
    keeps a reload and a new tab signed in, and the other process accepts it too (one
    server.cookieSecret, one sessions table). Signing out there revokes it everywhere."""
    first, first_pid = sessions.pages[0], sessions.landed[0]
    other_pid = next(pid for pid in deployment.app_pids if pid != first_pid)

    def journey(browser: Any) -> dict[str, Any]:
        from playwright.sync_api import expect

        context = first.context
        pages = [first]
        with evidence_on_failure(pages, tmp_path):
            wait_until(lambda: any(c["name"] == "cqrs_session" for c in context.cookies()), 20, "the cookie")
            cookies = {c["name"]: c for c in context.cookies()}
            first.reload()
            expect(first.get_by_role("button", name="Sign out")).to_be_visible(timeout=60_000)
            expect(first.get_by_role("heading", name="Workflows", exact=True)).to_be_visible()
            tab = context.new_page()  # a new tab, a typed URL
            pages.append(tab)
            tab.goto(f"{deployment.url}/overview")
            expect(tab.get_by_role("button", name="Sign out")).to_be_visible(timeout=60_000)
            expect(tab.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
            tab.close()
            pages.remove(tab)

            # Another browser holding only the session cookie, pinned to the other process.
            other_srv = "app2" if cookies["SRV"]["value"] == "app1" else "app1"
            elsewhere = new_context(browser)
            try:
                elsewhere.add_cookies([{**cookies["cqrs_session"]}, {**cookies["SRV"], "value": other_srv}])
                page = elsewhere.new_page()
                pages.append(page)
                page.goto(f"{deployment.url}/workflows")
                expect(page.get_by_role("button", name="Sign out")).to_be_visible(timeout=60_000)
                landed = served_by(page)
                page.get_by_role("button", name="Sign out").click()  # revokes the session
                expect(page.get_by_label("User name")).to_be_visible()
            finally:
                elsewhere.close()
                pages.remove(page)
            first.reload()  # the cookie the first process set is no longer accepted
            expect(first.get_by_label("User name")).to_be_visible(timeout=60_000)
            return {"cookie": cookies["cqrs_session"], "landed": landed}

    seen = in_browser(journey)
    assert seen["landed"] == other_pid
    cookie = seen["cookie"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie
    assert cookie["path"] == "/" and cookie["expires"] > 0, cookie  # Max-Age: not a browser-session cookie
