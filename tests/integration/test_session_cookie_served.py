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


def request(port: int, method: str, body: dict | None = None, headers: dict[str, str] | None = None):
    """(status, headers) of one request to the endpoint."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/{ENDPOINT}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
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
    )
    engine = create_engine(db_url, poolclass=NullPool)
    args = ["--server.address", "127.0.0.1", "--server.port", str(port)]
    try:
        with running(args, env, tmp_path, port):
            yield port, SessionStore(engine, 7200)
    finally:
        engine.dispose()


def test_the_server_sets_the_session_cookie_with_its_flags_once_per_ticket(served, db_url):
    port, store = served
    opened = store.open("rita")  # what the sign-in callback does after checking the password

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
        port, "POST", {"ticket": store.open("rita").ticket}, {"X-Forwarded-Proto": "https"}
    )
    assert status == 204
    assert "; Secure" in session_cookie(headers)[2]


def test_delete_revokes_the_session_and_drops_the_cookie(served, db_url):
    port, store = served
    _, headers = request(port, "POST", {"ticket": store.open("rita").ticket})
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
