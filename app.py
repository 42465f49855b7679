"""Research Workflow Console: the Streamlit entry point.

Opens the one process-wide runtime (database, migrations, service, projections), hands it to
the pages through `st.session_state.runtime`, signs people in, draws the shared sidebar and runs
the selected page.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import streamlit as st

from cqrs_core.app import ui
from cqrs_core.app.auth import (
    SignInThrottle,
    ThrottlePolicy,
    User,
    auth_section_problem,
    password_hash_of,
    users_problem,
)
from cqrs_core.app.runtime import PROCESS_RUNTIME, AppRuntime
from cqrs_core.app.sessions import drop_script, endpoint_path, handover_script
from cqrs_core.cli.serve import refusal_for_this_run, throttle_client
from cqrs_core.infra.config import SettingsError, get_settings
from cqrs_core.infra.errors import CQRSError
from cqrs_core.infra.logging_setup import apply_log_level
from cqrs_core.ops.health import HealthReport

log = logging.getLogger("cqrs_console.app")

# A local image: a `:material/…:` page icon makes the browser fetch the favicon from fonts.gstatic.com,
# which fails (and logs errors on every page) on a machine without internet access.
FAVICON = str(Path(__file__).resolve().parent / "assets" / "favicon.png")
st.set_page_config(page_title="Research Workflow Console", page_icon=FAVICON, layout="wide")

STATUS_BADGES = {
    "healthy": ":green-badge[:material/check_circle: Healthy]",
    "degraded": ":orange-badge[:material/warning: Degraded]",
    "unhealthy": ":red-badge[:material/error: Unhealthy]",
}
ROLE_BADGES = {
    "analyst": ":blue-badge[analyst]",
    "researcher": ":green-badge[researcher]",
    "operator": ":orange-badge[operator]",
    "admin": ":violet-badge[admin]",
}


# The process's runtime lives in PROCESS_RUNTIME (`cqrs-console serve` opens it before the first
# visitor); this cache shows the spinner while it is still opening, and clearing it releases it.
@st.cache_resource(
    show_spinner="Starting the database and applying migrations…", on_release=PROCESS_RUNTIME.release
)
def runtime() -> AppRuntime:
    return PROCESS_RUNTIME.get()


def refuse_unsafe_serving() -> None:
    """Applies CQRS_LOG_LEVEL, then, with sign-in off, stops with one line before the runtime
    opens when this server may be reached from other machines or through a foreign host name
    (`cqrs-console serve` refuses those before listening; this covers a plain `streamlit run`)."""
    try:
        settings = get_settings()
    except SettingsError:
        return  # open_or_explain() shows the line
    apply_log_level(settings.log_level)
    problem = refusal_for_this_run(settings.auth_mode)
    if problem:
        log.warning("refused a session: %s", problem)
        st.error(problem, icon=":material/public_off:")
        st.stop()


def open_or_explain() -> AppRuntime:
    """The runtime, or one sentence saying why there is none (the traceback goes to the log)."""
    try:
        return runtime()
    except SettingsError as exc:
        st.error(str(exc), icon=":material/settings:")
    except CQRSError as exc:
        log.warning("runtime did not open: %s", exc.context, exc_info=True)
        st.error(exc.user_message, icon=":material/database:")
    except Exception:
        log.exception("runtime did not open")
        st.error(
            "The database could not be opened; the server log has the details.", icon=":material/database:"
        )
    st.stop()


def sign_in_prompt() -> None:
    st.title("Research Workflow Console")
    st.info("Sign in with your user name and password in the sidebar to continue.", icon=":material/login:")


def client_address() -> str | None:
    """Who the sign-in throttle counts this session as: its TCP peer, or the forwarding client a
    proxy named in CQRS_TRUSTED_PROXIES reports (`cqrs-console serve` tells the server to believe
    X-Forwarded-For from those only). None means "localhost": Streamlit reports no address for
    loopback peers, so everyone on this machine shares that client."""
    return throttle_client(st.context.ip_address, st.context.headers, get_settings().trusted_proxies)


def sign_in() -> None:
    """The sign-in form's callback: runs before the next script run, so that run already shows
    the signed-in console (no extra rerun). Wrong passwords are throttled per (user name,
    client) and per client, in the database, so every app process counts them together; a
    client's own lockout never refuses a right password (many people may share one client)."""
    name = st.session_state.get("sign_in_name", "").strip()
    client = client_address()
    rt = st.session_state["runtime"]
    throttle = SignInThrottle(rt.service.engine, ThrottlePolicy.from_settings(rt.settings))
    st.session_state.pop("sign_in_error", None)
    try:
        result = throttle.sign_in(
            ui.configured_users() or {}, name, st.session_state.get("sign_in_password", ""), client
        )
    except Exception:  # no throttle, no password check: refuse rather than allow unlimited guesses
        log.exception("sign-in throttle unavailable")
        st.session_state["sign_in_error"] = "Sign-in is unavailable right now; try again in a minute."
        return
    if result.user is not None:
        st.session_state[ui.USER_KEY] = result.user
        open_session(result.user)
    elif result.wait is not None:
        log.warning("sign-in refused: too many failures for %r from %s", name[:100], client or "localhost")
        st.session_state["sign_in_error"] = f"Too many failed sign-ins; try again in {result.wait} s."
    else:
        st.session_state["sign_in_error"] = "Unknown user name or wrong password."


def open_session(user: User) -> None:
    """A sign-in session in the database; the next run hands its ticket to the page, which trades
    it for the session cookie (cqrs_core/app/sessions.py). Without one the sign-in still holds
    for this browser tab."""
    try:
        opened = ui.session_store().open(user.name, password_hash_of(ui.configured_users() or {}, user.name))
    except Exception:
        log.exception("could not open a sign-in session: signed in for this tab only")
        return
    st.session_state[ui.SESSION_KEY] = opened.session_id
    st.session_state[ui.SESSION_CHECKED_KEY] = time.monotonic()
    st.session_state[ui.HANDOVER_KEY] = opened.ticket


def sign_out() -> None:
    """Revokes the session (no app process accepts its cookie any more) and drops the cookie."""
    ui.revoke_session()
    ui.forget_sign_in()
    st.session_state.pop("sign_in_password", None)


def exchange_session_cookie() -> None:
    """After a sign-in, fetch the session cookie with the hand-over ticket; after a sign-out,
    drop it. The server answers both (session_routes.py): the page never holds the token."""
    url = endpoint_path(str(st.get_option("server.baseUrlPath") or ""))
    ticket = st.session_state.pop(ui.HANDOVER_KEY, None)
    if ticket is not None:
        st.html(handover_script(url, ticket), unsafe_allow_javascript=True, width="content")
    if st.session_state.pop(ui.DROP_COOKIE_KEY, False):
        st.html(drop_script(url), unsafe_allow_javascript=True, width="content")


def refuse_bad_users(settings_auth_mode: str) -> None:
    """With sign-in on, a [users] entry with a role we do not have stops every page with one
    line naming the user and the role (it is in the log too), instead of "wrong password". In
    oidc mode an [auth] section st.login cannot use does the same, instead of Streamlit's
    redacted error on every Sign in click."""
    if settings_auth_mode == "password":
        problem = users_problem(ui.configured_users() or {})
    elif settings_auth_mode == "oidc":
        problem = auth_section_problem(ui.configured_auth())
    else:
        return
    if problem:
        log.error("refused the configuration: %s", problem)
        st.error(problem, icon=":material/manage_accounts:")
        st.stop()


def draw_oidc_sign_in(role_claim: str) -> None:
    """OpenID Connect through Streamlit's own st.login ([auth] in secrets.toml)."""
    _, refusal = ui.oidc_user(role_claim)
    st.title("Research Workflow Console")
    if refusal:
        st.error(ui.md_escape(refusal), icon=":material/person_off:")
        st.button("Sign out", icon=":material/logout:", key="oidc_sign_out", on_click=st.logout)
        return
    st.info("Sign in with your organisation's account to continue.", icon=":material/login:")
    st.button("Sign in", type="primary", icon=":material/login:", key="oidc_sign_in", on_click=st.login)


def draw_sign_in_form() -> None:
    with st.sidebar:
        st.markdown("**Sign in**")
        if not ui.configured_users():
            st.error(
                "No users are configured: add [users.NAME] entries with password_hash and role to "
                ".streamlit/secrets.toml (`cqrs-console hash-password` makes a hash).",
                icon=":material/person_off:",
            )
            return
        with st.form("sign_in", border=False, clear_on_submit=False):
            st.text_input("User name", key="sign_in_name", autocomplete="username")
            st.text_input(
                "Password", type="password", key="sign_in_password", autocomplete="current-password"
            )
            st.form_submit_button(
                "Sign in", type="primary", icon=":material/login:", width="stretch", on_click=sign_in
            )
        if st.session_state.get("sign_in_error"):
            st.error(st.session_state["sign_in_error"], icon=":material/error:")


def draw_navigation(navigation: dict[str, list[Any]]) -> None:
    """The pages by audience, as links under a caption per section. Streamlit's own navigation
    with sections (1.67) wraps each section's <li>s in a <div> inside its <ul>: a list that
    screen readers cannot read as one, which axe reports as serious ("list", "listitem"). Plain
    links under a heading are read as they look; the link of the page on screen is highlighted.
    A section's links sit close together, sections a little apart: with the sidebar below, all of
    it fits a 900 px high window (a sidebar that scrolls hides the health at the bottom)."""
    with st.sidebar.container(key="console_nav", gap="small"):
        for section, pages in navigation.items():
            listed = [p for p in pages if p.visibility == "visible"]
            if not listed:
                continue
            with st.container(gap="xxsmall"):
                if [p.title for p in listed] != [section]:  # "Overview" needs no caption over "Overview"
                    st.caption(section)
                for listed_page in listed:
                    st.page_link(listed_page, label=listed_page.title, icon=listed_page.icon)


def draw_sidebar(rt: AppRuntime, report: HealthReport, user: User) -> None:
    # A line per fact (see draw_navigation).
    with st.sidebar:
        st.markdown(
            f"**Signed in** · :material/person: {ui.md_escape(user.name)} {ROLE_BADGES.get(user.role, user.role)}"
        )
        if rt.settings.auth_mode == "none":
            st.caption("Sign-in is off (CQRS_AUTH_MODE=none): everyone works as the local admin.")
        else:
            on_click = st.logout if rt.settings.auth_mode == "oidc" else sign_out
            st.button("Sign out", icon=":material/logout:", key="sign_out", on_click=on_click)
        latency = f" · {report.database_latency_ms:.1f} ms" if report.database_latency_ms is not None else ""
        st.markdown("**Health** · " + STATUS_BADGES[report.status] + latency)
        # The whole (redacted) URL is in the tooltip and on the System page.
        st.caption(f"Connection: {ui.md_escape(rt.connection_short)}", help=ui.md_escape(rt.connection_label))
        attention = ui.needs_attention(report.components)
        if attention is not None:
            # One short line whatever goes wrong (several long details wrapped below the fold and
            # made the sidebar scroll): which parts, each detail in the tooltip and on the Overview.
            st.caption(attention[0], help=attention[1])
        # Behind a proxy several app processes serve the console (docs/DEPLOY.md): which one drew this?
        st.caption(f"Served by {ui.md_escape(socket.gethostname())} · pid {os.getpid()}")


refuse_unsafe_serving()
rt = open_or_explain()
st.session_state["runtime"] = rt
refuse_bad_users(rt.settings.auth_mode)
user = ui.current_user()  # in password mode: as secrets.toml says now (removed users are signed out)
exchange_session_cookie()

# Grouped by audience. Each page is one file in pages/.
NAVIGATION = {
    "Overview": [
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    ],
    "Research": [
        st.Page("pages/new_workflow.py", title="New workflow", icon=":material/add_circle:"),
        st.Page("pages/workflows.py", title="Workflows", icon=":material/lab_profile:"),
        # One workflow: not listed, so that "Workflows" above leads from it back to the list.
        st.Page("pages/workflow.py", title="Workflow", icon=":material/lab_profile:", visibility="hidden"),
    ],
    "Analysis": [
        st.Page("pages/statistics.py", title="Statistics", icon=":material/monitoring:"),
    ],
    "Operations": [
        st.Page("pages/alerts.py", title="Alerts", icon=":material/notifications:"),
        st.Page("pages/projections.py", title="Projections", icon=":material/account_tree:"),
        st.Page("pages/event_explorer.py", title="Event explorer", icon=":material/manage_search:"),
        st.Page("pages/system.py", title="System", icon=":material/speed:"),
        st.Page("pages/audit.py", title="Audit", icon=":material/history:"),
    ],
    "Presenters": [
        st.Page("pages/demo.py", title="Demo", icon=":material/slideshow:"),
    ],
}

if user is None:
    # Password mode, nobody signed in yet: the pages are registered (so a link to one of them
    # keeps its place and opens once signed in) but neither listed nor run.
    st.navigation(NAVIGATION, position="hidden")
    if rt.settings.auth_mode == "oidc":
        draw_oidc_sign_in(rt.settings.oidc_role_claim)
    else:
        draw_sign_in_form()
        sign_in_prompt()
    st.stop()

page = st.navigation(NAVIGATION, position="hidden")
draw_navigation(NAVIGATION)
draw_sidebar(rt, rt.health(), user)
try:
    page.run()
except Exception:
    # A fault no page caught: one sentence for the person, the details in the server log only
    # (st.stop and st.rerun are BaseExceptions and pass through).
    log.exception("page %r failed", page.title)
    st.error(
        "Something went wrong on this page; the server log has the details. Reload the page to try again.",
        icon=":material/error:",
    )
