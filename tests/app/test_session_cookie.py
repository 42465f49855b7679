"""Password sign-in that survives a reload (issue 15, item 13), seen by the app: a new Streamlit
session with a valid session cookie is signed in without the form, as secrets.toml says now; a
tampered, expired or revoked cookie is no sign-in; signing out revokes the session.

The cookie itself is set by the server's endpoint (tests/integration/test_session_cookie.py
checks its Set-Cookie flags); here the test redeems the ticket the page would send, as the
endpoint does, and hands the cookie to the next session the way a browser would."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from page_harness import (  # noqa: F401
    app_env,
    bcrypt_hash,
    rerun,
    run_page,
    sign_in,
)
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from streamlit.runtime.context import ContextProxy

from cqrs_core.app.sessions import COOKIE_NAME, SessionStore, sign_cookie

USERS = {
    "users": {
        "rita": {"password_hash": bcrypt_hash("rita-password"), "role": "researcher"},
        "ann": {"password_hash": bcrypt_hash("ann-password"), "role": "analyst"},
    }
}
PROMPT = "Sign in with your user name and password in the sidebar to continue."


@pytest.fixture
def browser_cookies(monkeypatch):
    """The cookies the app sees on a session's WebSocket (AppTest has none)."""
    jar: dict[str, str] = {}
    monkeypatch.setattr(ContextProxy, "cookies", property(lambda self: dict(jar)))
    return jar


@pytest.fixture
def engine(db_url):
    engine = create_engine(db_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def signed_in_as(at) -> str | None:
    for markdown in at.sidebar.markdown:
        if match := re.search(r":material/person: (\w+) :\w+-badge\[(\w+)\]", markdown.value):
            return f"{match[1]} {match[2]}"
    return None


def prompted(at) -> bool:
    return any(PROMPT in i.value for i in at.info)


def ticket_of(at) -> str:
    """The ticket the page posts to the endpoint (the script st.html runs)."""
    scripts = [h.proto.body for h in at.get("html") if "_console/session" in h.proto.body]
    assert len(scripts) == 1, scripts
    body = re.search(r'body:("(?:[^"\\]|\\.)*")', scripts[0])[1]
    return json.loads(json.loads(body))["ticket"]


def cookie_for(at, engine, max_age: float = 3600) -> str:
    """What the endpoint answers to the page's ticket: the signed session cookie's value."""
    redeemed = SessionStore(engine, max_age, st.get_option("server.cookieSecret")).redeem(ticket_of(at))
    assert redeemed is not None
    token, expires_at = redeemed
    return sign_cookie(st.get_option("server.cookieSecret"), token, expires_at)


def signed_in_with_cookie(at, engine, browser_cookies) -> str:
    browser_cookies[COOKIE_NAME] = cookie_for(at, engine)
    return browser_cookies[COOKIE_NAME]


def test_a_new_session_with_the_cookie_is_signed_in_without_the_form(
    db_url, app_env, engine, browser_cookies
):
    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    assert signed_in_as(at) == "rita researcher"
    signed_in_with_cookie(at, engine, browser_cookies)

    reloaded = run_page(secrets=USERS)  # a reload, a new tab, a typed URL: a new Streamlit session

    assert signed_in_as(reloaded) == "rita researcher"
    assert not prompted(reloaded)
    assert [t.value for t in reloaded.title] == ["Overview"]
    reloaded.switch_page("pages/workflows.py")  # a typed URL to another page
    assert [t.value for t in rerun(reloaded).title] == ["Workflows"]


def test_the_ticket_is_handed_over_once(db_url, app_env, engine, browser_cookies):
    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    ticket = ticket_of(at)

    assert SessionStore(engine, 3600, st.get_option("server.cookieSecret")).redeem(ticket) is not None
    assert (
        SessionStore(engine, 3600, st.get_option("server.cookieSecret")).redeem(ticket) is None
    )  # a second use: nothing
    assert not [h for h in rerun(at).get("html") if "_console/session" in h.proto.body]  # sent once


@pytest.mark.parametrize("tamper", ["token", "expiry", "signature", "garbage"])
def test_a_tampered_cookie_signs_nobody_in(db_url, app_env, engine, browser_cookies, tamper):
    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    token, expiry, tag = signed_in_with_cookie(at, engine, browser_cookies).split(".")
    browser_cookies[COOKIE_NAME] = {
        "token": f"{token[:-1]}{'A' if token[-1] != 'A' else 'B'}.{expiry}.{tag}",
        "expiry": f"{token}.{int(expiry) + 86_400}.{tag}",  # a longer life, same signature
        "signature": f"{token}.{expiry}.{tag[:-2]}xx",
        "garbage": "<script>alert(1)</script>",
    }[tamper]

    reloaded = run_page(secrets=USERS)

    assert prompted(reloaded) and signed_in_as(reloaded) is None


def test_an_expired_cookie_signs_nobody_in(db_url, app_env, engine, browser_cookies):
    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    token, _ = SessionStore(engine, 3600, st.get_option("server.cookieSecret")).redeem(ticket_of(at))
    secret = st.get_option("server.cookieSecret")
    browser_cookies[COOKIE_NAME] = sign_cookie(secret, token, datetime.now(UTC) - timedelta(seconds=1))
    assert prompted(run_page(secrets=USERS))  # the cookie says it is over

    browser_cookies[COOKIE_NAME] = sign_cookie(secret, token, datetime.now(UTC) + timedelta(days=1))
    assert signed_in_as(run_page(secrets=USERS)) == "rita researcher"  # (the same token, in time)
    with engine.begin() as conn:  # the session itself runs out (its row), whatever the cookie says
        conn.execute(text("UPDATE console_sessions SET expires_at = now() - interval '1 second'"))
    assert prompted(run_page(secrets=USERS))


def test_signing_out_revokes_the_session_and_its_cookie(db_url, app_env, engine, browser_cookies):
    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    signed_in_with_cookie(at, engine, browser_cookies)
    other_tab = run_page(secrets=USERS)
    assert signed_in_as(other_tab) == "rita researcher"

    at.button(key="sign_out").click()
    rerun(at)

    assert prompted(at)
    dropped = [h.proto.body for h in at.get("html") if "_console/session" in h.proto.body]
    assert len(dropped) == 1 and '"DELETE"' in dropped[0]  # the page asks the server to drop the cookie
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM console_sessions WHERE revoked_at IS NULL")).scalar() == 0
        )
    assert prompted(run_page(secrets=USERS))  # the old cookie no longer signs in
    other_tab.session_state["sign_in_session_checked"] = 0.0  # its next check of the session is due
    assert prompted(rerun(other_tab))  # and the other tab, signed in by it, is signed out


def test_the_cookie_gets_the_role_secrets_toml_gives_now(db_url, app_env, engine, browser_cookies):
    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    signed_in_with_cookie(at, engine, browser_cookies)

    promoted = {"users": {**USERS["users"], "rita": {**USERS["users"]["rita"], "role": "operator"}}}
    assert signed_in_as(run_page(secrets=promoted)) == "rita operator"
    removed = {"users": {"ann": USERS["users"]["ann"]}}
    assert prompted(run_page(secrets=removed))
    assert prompted(run_page(secrets=USERS))  # removing her revoked the session: it does not come back


def test_a_new_password_ends_the_sessions_opened_with_the_old_one(db_url, app_env, engine, browser_cookies):
    """An administrator's answer to a stolen account is a new password (or removing the user and
    adding them back, even without a reload in between): the old cookie no longer signs in."""
    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    signed_in_with_cookie(at, engine, browser_cookies)
    assert signed_in_as(run_page(secrets=USERS)) == "rita researcher"

    new_password = {
        "users": {
            **USERS["users"],
            "rita": {**USERS["users"]["rita"], "password_hash": bcrypt_hash("new-one!")},
        }
    }
    assert prompted(run_page(secrets=new_password))
    assert prompted(run_page(secrets=USERS))  # and the old password's sessions are over for good


def test_auth_sign_out_ends_every_session_of_a_user(
    db_url, app_env, engine, browser_cookies, monkeypatch, capsys
):
    from cqrs_core.cli import main

    app_env(db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    signed_in_with_cookie(at, engine, browser_cookies)
    monkeypatch.setenv("CQRS_DATABASE_URL", db_url)

    assert main(["auth", "sign-out", "rita"]) == 0
    assert "Ended 1 session(s) of 'rita'." in capsys.readouterr().out
    assert prompted(run_page(secrets=USERS))
    assert main(["auth", "sign-out", "rita"]) == 0
    assert "No live session of 'rita'." in capsys.readouterr().out
