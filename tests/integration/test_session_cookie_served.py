"""The session cookie's endpoint on a real `cqrs-console serve` (issue 15, item 13): the server sets
the cookie (HttpOnly cannot be set from the page) with its flags, redeems a ticket once, refuses
a bad one without setting anything, marks the cookie Secure when a trusted proxy says the browser
came over TLS, and revokes the session and drops the cookie on DELETE.

The endpoint is added to Streamlit's managed server through a private route factory
(`cqrs_core.cli.serve.session_routes_installed`); the first test fails loudly when Streamlit moves it."""

from __future__ import annotations

import inspect
import json
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from test_serving import free_port, launcher_env, running

from cqrs_core.app.sessions import COOKIE_NAME, ENDPOINT, SessionStore


def test_streamlit_still_builds_its_server_from_the_route_factory_serve_wraps():
    from streamlit.web.server.starlette import starlette_app, starlette_server

    assert callable(getattr(starlette_app, "create_streamlit_routes", None)), (
        "Streamlit no longer has starlette_app.create_streamlit_routes: the sign-in cookie's endpoint "
        "is not served; see cqrs_core.cli.serve.session_routes_installed"
    )
    assert "create_streamlit_routes(runtime)" in inspect.getsource(starlette_app.create_starlette_app), (
        "Streamlit's create_starlette_app no longer calls create_streamlit_routes: the sign-in "
        "cookie's endpoint is not served; see cqrs_core.cli.serve.session_routes_installed"
    )
    assert starlette_server.create_starlette_app is starlette_app.create_starlette_app


SECRET = "test-cookie-secret-0123456789abcdef"
RITA_HASH = "$2b$04$" + "r" * 53  # what the session is bound to (no password is checked here)


def request(port: int, method: str, body: dict | None = None, headers: dict[str, str] | None = None):
    """(status, headers) of one request to the endpoint."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/{ENDPOINT}",
        data=data,
        method=method,
        # what the console's own page sends: a JSON fetch, its Origin the host it is sent to
        headers={"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def session_cookie(headers) -> tuple[str, dict[str, str], str]:
    """(value, attributes, the raw header) of the one Set-Cookie for the session cookie."""
    raw = [h for h in headers.get_all("Set-Cookie") or [] if h.startswith(f"{COOKIE_NAME}=")]
    assert len(raw) == 1, headers.get_all("Set-Cookie")
    morsel = SimpleCookie(raw[0])[COOKIE_NAME]
    return morsel.value, {k: v for k, v in morsel.items() if v}, raw[0]


@pytest.fixture
def served(db_url, tmp_path: Path):
    """`cqrs-console serve` with sign-in on, on the test database, trusting 127.0.0.1 as a proxy."""
    port = free_port()
    env = launcher_env(
        tmp_path,
        CQRS_DATABASE_URL=db_url,
        CQRS_AUTH_MODE="password",
        CQRS_TRUSTED_PROXIES="127.0.0.1",
        CQRS_SESSION_MAX_AGE_SECONDS="7200",
        STREAMLIT_SERVER_COOKIE_SECRET=SECRET,
    )
    engine = create_engine(db_url, poolclass=NullPool)
    args = ["--server.address", "127.0.0.1", "--server.port", str(port)]
    try:
        with running(args, env, tmp_path, port):
            yield port, SessionStore(engine, 7200, SECRET)
    finally:
        engine.dispose()


def test_the_server_sets_the_session_cookie_with_its_flags_once_per_ticket(served, db_url):
    port, store = served
    opened = store.open("rita", RITA_HASH)  # what the sign-in callback does after checking the password

    status, headers = request(port, "POST", {"ticket": opened.ticket})

    assert status == 204
    value, attributes, raw = session_cookie(headers)
    assert "HttpOnly" in raw and attributes["samesite"] == "Strict" and attributes["path"] == "/"
    assert 7100 <= int(attributes["max-age"]) <= 7200
    assert "Secure" not in raw  # plain http to the process itself
    assert headers["Cache-Control"] == "no-store"
    token = value.split(".")[0]
    assert store.live(token).user_name == "rita"
    assert request(port, "POST", {"ticket": opened.ticket})[0] == 403  # a ticket works once


@pytest.mark.parametrize("body", [{"ticket": "made-up"}, {"ticket": ""}, {}, {"ticket": ["x"]}])
def test_a_bad_ticket_sets_nothing(served, body):
    port, _ = served
    status, headers = request(port, "POST", body)
    assert status == 403 and not headers.get_all("Set-Cookie")


def test_the_cookie_is_secure_when_a_trusted_proxy_says_the_browser_came_over_tls(served):
    port, store = served
    status, headers = request(
        port, "POST", {"ticket": store.open("rita", RITA_HASH).ticket}, {"X-Forwarded-Proto": "https"}
    )
    assert status == 204
    assert "; Secure" in session_cookie(headers)[2]


def test_delete_revokes_the_session_and_drops_the_cookie(served, db_url):
    port, store = served
    _, headers = request(port, "POST", {"ticket": store.open("rita", RITA_HASH).ticket})
    value = session_cookie(headers)[0]

    status, headers = request(port, "DELETE", headers={"Cookie": f"{COOKIE_NAME}={value}"})

    assert status == 204
    dropped, attributes, _ = session_cookie(headers)
    assert dropped == "" and attributes["max-age"] == "0"
    assert store.live(value.split(".")[0]) is None
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(
                    text("SELECT count(*) FROM console_sessions WHERE revoked_at IS NOT NULL")
                ).scalar()
                == 1
            )
    finally:
        engine.dispose()


def raw_post(port: int, body: bytes, headers: dict[str, str]):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/{ENDPOINT}", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def test_a_form_on_another_site_cannot_sign_a_visitor_in_login_csrf(served):
    """The attacker's own valid ticket, posted by a form on another site (text/plain, no
    preflight) or with another Origin, or with none: refused, nothing set, the ticket unspent."""
    port, store = served
    ticket = store.open("rita", RITA_HASH).ticket
    body = json.dumps({"ticket": ticket}).encode()
    for headers in (
        {"Content-Type": "text/plain", "Origin": "http://localhost:8613"},  # the form's request
        {"Content-Type": "text/plain", "Origin": f"http://127.0.0.1:{port}"},
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
        {"Content-Type": "application/json", "Origin": "null"},
        {"Content-Type": "application/json"},  # no Origin
    ):
        status, answered = raw_post(port, body, headers)
        assert status == 403, headers
        assert not answered.get_all("Set-Cookie"), headers
    assert request(port, "POST", {"ticket": ticket})[0] == 204  # refused ones did not spend it


def declared_post(port: int, declared: int, sent: bytes) -> int:
    """The status of a POST that declares `declared` bytes and sends `sent` (then waits)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", f"/{ENDPOINT}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Origin", f"http://127.0.0.1:{port}")
        conn.putheader("Content-Length", str(declared))
        conn.endheaders()
        conn.send(sent)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_huge_or_deeply_nested_body_is_refused_without_reading_it_all(served):
    """A body too big to be a ticket is refused before it is read (it grew the server by 800 MB
    before), and JSON nested past the parser's depth is no ticket (it gave a 500 and a traceback)."""
    port, _ = served
    assert declared_post(port, 400_000_000, b" " * 1024) == 413  # answered without the rest
    origin = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"}
    assert raw_post(port, b"[" * 1000, origin)[0] == 403  # under the cap, not a ticket
    nested = b"[" * 1024
    assert declared_post(port, len(nested), nested) == 403


def test_a_session_row_edited_in_the_database_signs_nobody_in(served, db_url):
    """The runtime role may UPDATE the sessions table; a row moved to another user (or another
    token put in it) no longer matches its HMACs under the cookie secret, which the database
    never sees."""
    from datetime import UTC, datetime

    from cqrs_core.app.sessions import session_holds, verify_cookie

    port, store = served
    value, _, _ = session_cookie(request(port, "POST", {"ticket": store.open("rita", RITA_HASH).ticket})[1])
    token = verify_cookie(SECRET, value, datetime.now(UTC))
    live = store.live(token)
    assert live is not None and session_holds(SECRET, live, token, RITA_HASH)
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE console_sessions SET user_name = 'ann' WHERE session_id = :i"),
            {"i": live.session_id},
        )
    moved = store.live(token)
    assert moved is not None and moved.user_name == "ann"
    assert not session_holds(SECRET, moved, token, "$2b$04$" + "a" * 53)  # ann's own hash
    assert not session_holds(SECRET, moved, token, RITA_HASH)
    assert not session_holds(SECRET, live, token, "$2b$04$" + "n" * 53)  # rita's password changed
