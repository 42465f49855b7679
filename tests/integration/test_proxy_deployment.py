"""More than one app process (issue 14): two `cqrs-console serve` processes on one PostgreSQL
database, sharing one `server.cookieSecret`, behind a real HAProxy running deploy/haproxy.cfg
itself, and real Chromium talking to the proxy over TLS. The processes, the proxy's rendering of
the shipped file and the browser thread are tests/integration/deployment.py's (shared with the
scale-out topology test).
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deployment import (
    USER,
    console_env,
    evidence_on_failure,
    new_context,
    open_and_sign_in,
    serve_apps,
    served_by,
    start_proxy,
    wait_until_idle,
    write_users,
)
from services import build_service
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from waiting import wait_until

from cqrs_core import CommandFactory
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.projections.engine.locks import RUNNER_NAMESPACE, lock_key

pytestmark = pytest.mark.e2e

FRESH_SESSIONS = 4
SEEDED = {  # title: research question; the titles carry CSV's own delimiters
    'Proxy alpha: soil, "wet" samples': "Does moisture change the count?",
    "Proxy bravo: river sediment": "Where does the sediment settle?",
    "Proxy charlie: leaf litter": "How fast does it decay?",
    "Proxy delta: moss, lichens": "Which grows back first?",
    "Proxy echo: pond water": "What lives in it?",
}


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
    write_users(root, "researcher")
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
        apps = serve_apps(stack, root, [env, env], logs)
        proxy = start_proxy(stack, haproxy, openssl, root, logs, apps)
        print(f"logs of the deployment: {logs}")
        yield Deployment(
            url=proxy.url,
            http_url=proxy.http_url,
            database_url=database_url,
            app_pids=[app.pid for app in apps],
            logs=logs,
            restart_proxy=proxy.restart,
        )
    for process in [*(app.process for app in apps), *proxy.processes]:
        assert process.poll() is not None, f"process {process.args} is still running"


# ---------------------------------------------------------------- what a person does in the browser


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
