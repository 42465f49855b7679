"""Small Streamlit helpers shared by the pages: the runtime, the signed-in user, running a
command or a query with one-sentence errors, button actions and their toasts, and showing
people's text safely. Only app.py, the pages and the screens they draw (`cqrs_core.app.screens`)
import this module."""

from __future__ import annotations

import csv
import html
import io
import logging
import re
import runpy
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import streamlit as st

from cqrs_core.app.auth import LOCAL_ADMIN, User, as_configured, password_hash_of
from cqrs_core.app.live import LiveBoard, Snapshot
from cqrs_core.app.runtime import AppRuntime
from cqrs_core.app.sessions import COOKIE_NAME, RECHECK_SECONDS, SessionStore, session_holds, verify_cookie
from cqrs_core.domain.vocabulary import ROLES
from cqrs_core.infra.config import get_settings, is_time_zone
from cqrs_core.infra.errors import AuthorizationError, CQRSError, StaleReadError, ValidationError
from cqrs_core.ops.health import ComponentHealth
from cqrs_core.read.queries import Query
from cqrs_core.read.results import HIGHLIGHT_START, HIGHLIGHT_STOP
from cqrs_core.service import CQRSService
from cqrs_core.write.command_bus import CommandResult
from cqrs_core.write.commands import Command, CommandFactory

log = logging.getLogger("cqrs_console.ui")

USER_KEY = "user"
# The sign-in session (cqrs_core/app/sessions.py): its server-side id, when it was last checked,
# the hand-over ticket the next run sends for the cookie, and "drop the cookie" after sign-out.
SESSION_KEY = "sign_in_session"
SESSION_CHECKED_KEY = "sign_in_session_checked"
HANDOVER_KEY = "sign_in_handover"
DROP_COOKIE_KEY = "sign_in_drop_cookie"
# Position of the newest event this session wrote: reads that pass `fresh=True` wait for it.
LAST_WRITE_KEY = "last_write_position"
# Confirmations queued by button callbacks, shown by the next `show_toasts()`.
TOASTS_KEY = "queued_toasts"

T = TypeVar("T")


def require_entry_point() -> None:
    """Call first in every page file. Pages run inside app.py's st.navigation, which opens the
    runtime, signs people in and draws the sidebar. Until the first st.navigation call of the
    process, Streamlit still treats `pages/` as an old-style pages directory and runs a page file
    on its own (a deep link such as /workflows as the first request after the server starts;
    every AppTest run). That run hands over to app.py here, in the same run, so nothing the
    person just did (a click, a form submit) is lost."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if not PagesManager.uses_pages_directory:
        return
    PagesManager.uses_pages_directory = False  # what app.py's st.navigation sets anyway
    ctx = get_script_run_ctx()
    assert ctx is not None  # a page file runs in a Streamlit script run
    runpy.run_path(ctx.pages_manager.main_script_path, run_name="__main__")  # runs this page inside it
    st.stop()


def runtime() -> AppRuntime:
    return st.session_state["runtime"]


def service() -> CQRSService:
    return runtime().service


def configured_users() -> Mapping[str, Any] | None:
    """The [users] table of .streamlit/secrets.toml, or None when there is none."""
    try:
        return st.secrets["users"]
    except Exception:  # no secrets file, or no [users] in it
        return None


def configured_auth() -> Any:
    """The [auth] section of secrets.toml (st.login's provider), None without one."""
    try:
        return st.secrets["auth"]
    except Exception:  # no secrets file, or no [auth] in it
        return None


def current_user() -> User | None:
    """The signed-in user; the local admin when sign-in is off; None before a password sign-in.

    With sign-in on, the configured users are read again on every call (button callbacks and
    fragment reruns included, which run before or without app.py): a user removed from
    secrets.toml is signed out and a changed role applies at once. A new Streamlit session (a
    reload, a new tab, a typed URL) is signed in by a valid session cookie; a signed-in one asks
    every RECHECK_SECONDS whether its session was revoked (signed out elsewhere) or ran out."""
    user = st.session_state.get(USER_KEY)
    settings = runtime().settings
    if settings.auth_mode == "none":
        return user or LOCAL_ADMIN
    if settings.auth_mode == "oidc":
        return oidc_user(settings.oidc_role_claim)[0]
    users = configured_users() or {}
    if user is None:
        user = _user_from_cookie(users)
        if user is None:
            return None
    elif not _session_still_live(users):
        log.info("signed out %r: the session was revoked, ran out or no longer matches", user.name)
        forget_sign_in()
        return None
    current = as_configured(users, user)
    if current is None:
        log.info("signed out %r: no longer a configured user", user.name)
        revoke_session()
        forget_sign_in()
    elif current != user:
        st.session_state[USER_KEY] = current
    return current


def oidc_user(role_claim: str) -> tuple[User | None, str | None]:
    """The user st.login signed in (OpenID Connect), with the role its `role_claim` names, and
    None with a sentence when it names none of ours: there is no default role. Read from the
    identity cookie on every run, so a new sign-in at the provider applies at once."""
    info = st.user
    if not info.get("is_logged_in"):
        return None, None
    name = str(info.get("email") or info.get("preferred_username") or info.get("sub") or "")
    claim = info.get(role_claim)
    if not name or not isinstance(claim, str) or claim not in ROLES:
        shown = "missing" if claim is None else repr(str(claim)[:100])
        log.warning("refused an OpenID Connect sign-in of %r: claim %r is %s", name[:100], role_claim, shown)
        return None, (
            f"Your account has no console role: its {role_claim!r} claim is {shown}, and the console "
            f"accepts only {', '.join(ROLES)}. Ask an administrator to set it, then sign in again."
        )
    return User(name, claim), None


def session_store() -> SessionStore:
    rt = runtime()
    return SessionStore(rt.service.engine, rt.settings.session_max_age_seconds, cookie_secret())


def cookie_secret() -> str:
    return str(st.get_option("server.cookieSecret") or "")


def _user_from_cookie(users: Mapping[str, Any]) -> User | None:
    """The user a valid session cookie names (role as configured now), remembered in this
    session; None without one. A tampered, expired or revoked cookie is no sign-in."""
    token = verify_cookie(cookie_secret(), st.context.cookies.get(COOKIE_NAME), datetime.now(UTC))
    if token is None:
        return None
    try:
        live = session_store().live(token)
    except Exception:
        log.exception("could not check a session cookie")
        return None
    if live is None:
        return None
    user = as_configured(users, User(live.user_name, ""))
    # Removed from secrets.toml, or its password changed since the session opened (also when it
    # was removed and added back), or the row was edited in the database: the session ends.
    if user is None or not session_holds(
        cookie_secret(), live, token, password_hash_of(users, live.user_name)
    ):
        log.info(
            "signed out %r: no longer a configured user, a new password, or an altered session",
            live.user_name,
        )
        try:
            session_store().revoke(live.session_id)
        except Exception:
            log.exception("could not revoke a session")
        return None
    st.session_state[USER_KEY] = user
    st.session_state[SESSION_KEY] = live.session_id
    st.session_state[SESSION_CHECKED_KEY] = time.monotonic()
    return user


def _session_still_live(users: Mapping[str, Any]) -> bool:
    session_id = st.session_state.get(SESSION_KEY)
    if session_id is None:  # signed in before the session cookie existed (or in AppTest without one)
        return True
    checked = st.session_state.get(SESSION_CHECKED_KEY, 0.0)
    if time.monotonic() - checked < RECHECK_SECONDS:
        return True
    try:
        live = session_store().live_by_id(session_id)
    except Exception:
        log.exception("could not check a session")
        return True  # the database is away: the page says so; a revocation applies once it is back
    st.session_state[SESSION_CHECKED_KEY] = time.monotonic()
    return live is not None and session_holds(
        cookie_secret(), live, None, password_hash_of(users, live.user_name)
    )


def revoke_session() -> None:
    """Revoke this Streamlit session's sign-in session in the database (every process refuses
    its cookie from now on) and have the next run drop the cookie."""
    session_id = st.session_state.get(SESSION_KEY)
    if session_id is not None:
        try:
            session_store().revoke(session_id)
        except Exception:
            log.exception("could not revoke a session")
    st.session_state[DROP_COOKIE_KEY] = True


def forget_sign_in() -> None:
    for key in (USER_KEY, LAST_WRITE_KEY, SESSION_KEY, SESSION_CHECKED_KEY, HANDOVER_KEY):
        st.session_state.pop(key, None)


def can(role_needed: str) -> bool:
    """Whether the signed-in user holds `role_needed` (admin holds every role). The core
    enforces the same rule; pages use this only to offer the actions a person may take."""
    user = current_user()
    return user is not None and user.can(role_needed)


def commands() -> CommandFactory:
    """A CommandFactory for the signed-in user: every command carries who sent it."""
    user = current_user()
    if user is None:  # signed out since the page was drawn (removed from secrets.toml)
        raise AuthorizationError("You are signed out; sign in again to do that.")
    return CommandFactory(actor=user.name, role=user.role)


def show_error(exc: CQRSError) -> None:
    # Messages can quote what people typed (a task name); never let that render as markdown.
    if isinstance(exc, ValidationError) and len(exc.problems) > 1:
        st.error(
            "Please fix these:\n" + "\n".join(f"- {md_escape(p)}" for p in exc.problems),
            icon=":material/error:",
        )
    else:
        st.error(md_escape(exc.user_message), icon=":material/error:")


def build(make, *args: Any, **kwargs: Any) -> Any | None:
    """Build a command or query; a validation problem is shown and None returned."""
    try:
        return make(*args, **kwargs)
    except CQRSError as exc:
        show_error(exc)
        return None


def run_command(command: Command | None, success: str | None = None) -> CommandResult | None:
    """Execute `command`; on success toast `success`, on a refusal show one sentence. Never raises.
    The position of its events is remembered so that `run_query(..., fresh=True)` reads it."""
    if command is None:
        return None
    try:
        result = service().execute_command(command)
    except CQRSError as exc:
        show_error(exc)
        return None
    except Exception:  # a bug: the traceback goes to the log, the person sees one sentence
        log.exception("command %s failed", type(command).__name__)
        st.error("Something went wrong on our side; the server log has the details.", icon=":material/error:")
        return None
    if result.position:
        st.session_state[LAST_WRITE_KEY] = max(result.position, st.session_state.get(LAST_WRITE_KEY, 0))
    if success:
        st.toast(success, icon=":material/check_circle:")
    return result


def run_query(query: Query | None, *, fresh: bool = False, **kwargs: Any) -> Any | None:
    """Execute `query`; on failure show one sentence and return None. With `fresh=True` the
    answer includes this session's own latest write (read-your-writes)."""
    if query is None:
        return None
    if fresh and st.session_state.get(LAST_WRITE_KEY):
        kwargs.setdefault("min_position", st.session_state[LAST_WRITE_KEY])
    user = current_user()  # charged to the query rate limit (not when served from the cache)
    kwargs.setdefault("actor", user.name if user is not None else "(signed out)")
    try:
        return service().execute_query(query, **kwargs)
    except StaleReadError as exc:
        # Waited the whole timeout once; the next read shows what there is instead of waiting again.
        st.session_state.pop(LAST_WRITE_KEY, None)
        show_error(exc)
        return None
    except CQRSError as exc:
        show_error(exc)
        return None
    except Exception:
        log.exception("query %s failed", type(query).__name__)
        st.error("Something went wrong on our side; the server log has the details.", icon=":material/error:")
        return None


def act(action: Callable[[], T], success: str | Callable[[T], str] | None, refusal_key: str) -> bool:
    """Button callback: run `action` before the page redraws, so the page shows its effect. On
    success queue the toast `success` (or `success(result)`) and forget the last refusal; a
    refusal is kept in `st.session_state[refusal_key]`, in one sentence, for the page to show
    where it belongs. Callbacks do not draw: in a fragment, what they draw would land at the top
    of the page. Returns whether the action succeeded.

    (A command sent after `if st.button(...)` in the script itself, where it may draw, goes
    through `run_command` instead.)"""
    try:
        result = action()
    except CQRSError as exc:
        st.session_state[refusal_key] = exc.user_message
        return False
    except Exception:  # a bug: the traceback goes to the log, the person sees one sentence
        log.exception("the action behind %s failed", refusal_key)
        st.session_state[refusal_key] = "Something went wrong on our side; the server log has the details."
        return False
    st.session_state.pop(refusal_key, None)
    if success is not None:
        announce(success(result) if callable(success) else success)
    return True


def act_in_place(action: Callable[[], T], success: str | Callable[[T], str], key: str) -> bool:
    """Like `act`, but the outcome is not a toast: the success message is kept in
    `st.session_state[key + ".done"]` (a refusal, as with `act`, in `st.session_state[key]`) for
    `show_outcome(key)` to draw once, in the card the button belongs to. For pages whose cards
    show their own progress, where a toast in the top-right corner would cover the page's
    caption and only repeat what the card says."""
    results: list[T] = []

    def run() -> T:
        results.append(action())
        return results[-1]

    done = act(run, None, key)
    if done:
        st.session_state[key + ".done"] = success(results[-1]) if callable(success) else success
    else:
        st.session_state.pop(key + ".done", None)
    return done


def show_outcome(key: str, keep: bool = False) -> None:
    """Draw, once, what `act_in_place` kept under `key`: the success in green, a refusal in red.
    `keep`: draw it on every run until the next action under `key` replaces it, for a fragment
    that reruns every few seconds (drawn once, the message would be gone at its next tick)."""
    take = st.session_state.get if keep else st.session_state.pop
    refusal = take(key, None)
    if refusal:
        st.error(md_escape(refusal), icon=":material/block:")
    done = take(key + ".done", None)
    if done:
        st.success(md_escape(done), icon=":material/check_circle:")


def announce(message: str) -> None:
    """Queue a toast for the next `show_toasts()` (for callbacks, which must not draw)."""
    st.session_state.setdefault(TOASTS_KEY, []).append(message)


def show_toasts() -> None:
    """Show the toasts queued by button callbacks, once each."""
    for message in st.session_state.pop(TOASTS_KEY, []):
        st.toast(message, icon=":material/check_circle:")


# ---------------------------------------------------------------- people's text, shown verbatim

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>:$~&=\"'%/;?@^,])")


def md_escape(text: Any) -> str:
    """`text` for st.markdown / st.title / st.toast, shown exactly as typed: every ASCII
    punctuation character is backslash-escaped (CommonMark allows it for all of them), so no
    markdown, HTML, LaTeX or Streamlit directive in it takes effect."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", str(text)).replace("\n", "  \n")


# What a table shows in a cell with no value (st.dataframe's `placeholder`): Streamlit's own is a
# grey "None", which reads as a word to people who are not programmers.
MISSING = "—"

ATTENTION_NAMES = 2


def needs_attention(components: Sequence[ComponentHealth]) -> tuple[str, str] | None:
    """The parts of a health report that are not healthy, as one short line for the sidebar
    ("Needs attention: projections, database and 3 more": two names at most, so it never pushes
    the rest of the sidebar below the fold) and its tooltip, each part's detail on a line of its
    own; both escaped for markdown. None when every part is healthy."""
    troubled = [c for c in components if c.status != "healthy"]
    if not troubled:
        return None
    shown = ", ".join(md_escape(c.name) for c in troubled[:ATTENTION_NAMES])
    more = len(troubled) - ATTENTION_NAMES
    line = f"Needs attention: {shown}" + (f" and {more} more" if more > 0 else "")
    return line, "\n\n".join(f"{md_escape(c.name)}: {md_escape(c.detail)}" for c in troubled)


def highlighted_html(snippet: str) -> str:
    """A search snippet as HTML: the text escaped, the match marks turned into <mark>. The marks
    are private-use characters the database adds; no typed text can produce them."""
    escaped = html.escape(snippet, quote=True)
    return escaped.replace(HIGHLIGHT_START, "<mark>").replace(HIGHLIGHT_STOP, "</mark>")


def plain_snippet(snippet: str) -> str:
    """A search snippet without its highlight marks (for tables and CSV)."""
    return snippet.replace(HIGHLIGHT_START, "").replace(HIGHLIGHT_STOP, "")


def plotly_escape(text: Any) -> str:
    """`text` for a Plotly label (category values on an axis, trace names, hover text), shown
    exactly as typed. Plotly renders labels as a subset of HTML (<a href>, <b>, <i>, <br>,
    <span style>, <sub>, <sup>) and decodes entities; escaping `&`, `<` and `>` leaves no tag to
    interpret, and Plotly decodes the entities back to the characters people typed."""
    return html.escape(str(text), quote=False)


# OWASP, CSV injection: a spreadsheet treats a cell starting with one of these as a formula
# (tab and CR because some spreadsheets strip them first and then read a formula).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# ... and a cell can start in the middle of a text: a spreadsheet that splits on `;`, `,`, tab or
# `|` (the tag separator), or reads a line break as a new row, sees a new cell after one (spaces
# before it trimmed).
_FORMULA_INSIDE = re.compile(r"[;,|\t\r\n][ \t]*[=+\-@\t\r]")


def csv_safe(value: Any) -> Any:
    """A cell for a CSV export: text a spreadsheet could run as a formula, because it starts with
    `=`, `+`, `-`, `@`, tab or CR or holds one after a `;`, `,`, `|`, tab or line break, gets a
    leading single quote and is shown as text (OWASP's advice; the writers below also quote every
    cell, so a separator inside a cell never starts a new one). Only text is changed: numbers,
    dates and empty cells are written as they are, so a negative number stays a number."""
    if isinstance(value, str) and (value.startswith(_FORMULA_STARTS) or _FORMULA_INSIDE.search(value)):
        return "'" + value
    return value


def dataframe_csv(table: Any) -> bytes:
    """A pandas DataFrame as UTF-8 CSV for a download button, every cell quoted and every text
    cell through `csv_safe`; numeric and date columns keep their values (spreadsheets read a
    quoted number as a number)."""
    safe = table.copy()
    for column in safe.columns:
        if safe[column].dtype == object or str(safe[column].dtype) in ("string", "str"):
            safe[column] = safe[column].map(csv_safe)
    return safe.to_csv(index=False, quoting=csv.QUOTE_ALL).encode("utf-8")


_DOT_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def dot_label(text: Any, limit: int = 60) -> str:
    """`text` for the inside of a double-quoted Graphviz DOT string (a node or edge label),
    shown as typed and cut to `limit` characters. It is cut before it is escaped, so a cut can
    never leave half an escape (a lone backslash would swallow the closing quote and break the
    graph); backslashes are doubled (no `\\n`, `\\l`, `\\N` … directive takes effect) and control
    characters become spaces. A label never ends in a backslash: older Graphviz lexers read a
    doubled backslash before the closing quote as a backslash and an escaped quote, so a
    trailing one gets an (invisible) space after it."""
    cut = _DOT_CONTROL.sub(" ", str(text))[:limit]
    escaped = cut.replace("\\", "\\\\").replace('"', '\\"')
    return escaped + " " if escaped.endswith("\\") else escaped


# ---------------------------------------------------------------- exports

WORKFLOW_CSV_COLUMNS = (
    "workflow_id",
    "title",
    "research_question",
    "status",
    "priority",
    "methodology",
    "owner",
    "tags",
    "due_date",
    "created_at",
    "started_at",
    "finished_at",
    "duration_seconds",
    "task_total",
    "task_completed",
    "task_failed",
    "progress_pct",
    "last_activity_at",
)


TAG_SEPARATOR = " | "  # not `;` or `,`: a spreadsheet would split the cell there


def workflows_csv(
    svc: CQRSService,
    search: str,
    filters: dict[str, Any],
    *,
    sort: str = "created_at",
    descending: bool = True,
    limit: int = 10_000,
) -> bytes:
    """Every workflow matching `search` / `filters` (up to `limit`) as UTF-8 CSV, in the order
    the list shows them; search results get a `match` column. Takes the service explicitly and
    never touches Streamlit, so a download button can build it on a thread of its own. Every cell
    is quoted; text is written as stored, except that a text cell a spreadsheet would run as a
    formula gets a leading quote (`csv_safe`); numbers and dates keep their values. Tags are
    joined with `TAG_SEPARATOR`, which no spreadsheet splits cells on."""
    from cqrs_core.read.queries import MAX_PAGE_SIZE, QueryFactory

    factory = QueryFactory()
    out = io.StringIO()
    columns = WORKFLOW_CSV_COLUMNS + (("match",) if search else ())
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    page, written = 1, 0
    query: Query
    while written < limit:
        if search:
            query = factory.search_workflows(search, **filters, page=page, page_size=MAX_PAGE_SIZE)
        else:
            query = factory.get_workflow_list(
                **filters, sort=sort, descending=descending, page=page, page_size=MAX_PAGE_SIZE
            )
        result = svc.execute_query(query)
        for item in result.items[: limit - written]:
            row = dict(item)
            row["tags"] = TAG_SEPARATOR.join(row.get("tags") or [])
            if search:
                row["match"] = plain_snippet(row.get("snippet") or "")
            writer.writerow({key: csv_safe(value) for key, value in row.items()})
            written += 1
        if page >= result.page_count:
            break
        page += 1
    return out.getvalue().encode("utf-8")


# ---------------------------------------------------------------- small formatting helpers


def label(value: str) -> str:
    """A word of the domain's vocabulary (methodology, priority, task kind, outcome) as people
    read it: `literature_search` → `Literature search`. It encodes nothing: a Plotly label still
    goes through `plotly_escape`."""
    return value.replace("_", " ").capitalize()


def table_height(rows: int, cap: int | None = 40) -> int:
    """Pixels for a table that shows `rows` rows (up to `cap`, or all of them with `cap=None`)
    without an inner scrollbar."""
    return 38 + 35 * max(1, rows if cap is None else min(rows, cap))


_STATUS_COLORS = {
    "draft": "gray",
    "running": "blue",
    "paused": "orange",
    "completed": "green",
    "failed": "red",
    "cancelled": "violet",
    "pending": "gray",
}


def status_badge(status: str) -> str:
    """A workflow or task status as a coloured markdown badge."""
    return f":{_STATUS_COLORS.get(status, 'gray')}-badge[{status}]"


def viewer_zone_name() -> str:
    """The time zone people read this page in: their browser's (Streamlit reports it), else the
    setting CQRS_TIME_ZONE (default UTC). Every time on the console is shown in it, and says so."""
    try:
        zone = st.context.timezone
    except Exception:  # outside a script run (a test computing what a page shows)
        zone = None
    return zone if zone and is_time_zone(zone) else get_settings().time_zone


def when(value: datetime | None) -> str:
    """A timestamp as people read it on this console: in the viewer's zone, to the second, with the
    zone's abbreviation (e.g. "2026-11-30 15:02:11 CET")."""
    if value is None:
        return "—"
    local = value.astimezone(ZoneInfo(viewer_zone_name()))
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or viewer_zone_name()}"


def clock(value: datetime) -> str:
    """The time of day of `value` in the viewer's zone, with its abbreviation ("15:02:11 CET")."""
    local = value.astimezone(ZoneInfo(viewer_zone_name()))
    return f"{local:%H:%M:%S} {local.tzname() or viewer_zone_name()}"


def datetime_column(label: str, fmt: str, **kwargs: Any) -> Any:
    """A table column of timestamps shown in the viewer's zone, its name in the header."""
    zone = viewer_zone_name()
    return st.column_config.DatetimeColumn(f"{label} ({zone})", format=fmt, timezone=zone, **kwargs)


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago `value` was: '12 s ago', '5 min ago', '3 h ago', '2 days ago'."""
    if value is None:
        return "never"
    seconds = max(0.0, ((now or datetime.now(UTC)) - value).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def duration(seconds: float | None) -> str:
    """A duration in the largest unit that keeps it readable: '45 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def stale_data_banner(statuses: list[Any] | None = None) -> None:
    """A warning when a projection is further behind the event log than the stale threshold:
    what this page shows may be out of date. Silent when everything is current. Pass the
    projection statuses when the page has them already."""
    from cqrs_core.read.queries import QueryFactory

    if statuses is None:
        try:
            statuses = service().execute_query(QueryFactory().get_projection_status())
        except CQRSError:
            return  # the health section says why; a banner about a banner would only add noise
    threshold = runtime().settings.stale_lag_threshold_seconds
    behind = [s for s in statuses if s.lag_seconds > threshold]
    if behind:
        worst = max(behind, key=lambda s: s.lag_seconds)
        names = ", ".join(s.name for s in behind)
        st.warning(
            f"Data may be out of date: the read model is {worst.lag_seconds:.0f} s "
            f"({worst.lag_events:,} events) behind the event log ({names}). "
            "Check the Projections page.",
            icon=":material/schedule:",
        )


# ---------------------------------------------------------------- live cards

# When (on the live board's clock) this session last loaded a page or acted: its live cards
# show shared data taken after that moment.
LIVE_SINCE_KEY = "live_since"


@st.cache_resource(show_spinner=False)
def _live_board(_rt: AppRuntime, runtime_id: int) -> LiveBoard:
    # Keyed by the runtime's id (a runtime is not hashable): app.py hands every session the same one.
    return LiveBoard(_rt)


def live_board() -> LiveBoard:
    """The live cards' shared snapshots: one board per process (`cqrs_core.app.live`)."""
    rt = runtime()
    return _live_board(rt, id(rt))


def refresh_live() -> None:
    """From now on this session's live cards show shared data taken after this moment. Called
    on every full run of a live page (a page load shows current data) and after the session's
    own actions (its change shows at once); between those, every viewer shares one snapshot
    per interval."""
    st.session_state[LIVE_SINCE_KEY] = live_board().now()


def live_since() -> float:
    return st.session_state.get(LIVE_SINCE_KEY, 0.0)


def live_value(snapshot: Snapshot[T]) -> T | None:
    """A live snapshot's value, or None after showing its error in one sentence."""
    if snapshot.error is not None:
        show_error(snapshot.error)
        return None
    return snapshot.value


def label_column(label: str | None, colors: Mapping[str, str], **kwargs: Any) -> Any:
    """A table column that shows each value (a plain string, e.g. a status) as a label in its
    colour from `colors`; the table's data keeps the plain strings. Cheaper to draw than a
    pandas Styler, which live cards would recompute on every refresh of every tab."""
    return st.column_config.MultiselectColumn(
        label, options=list(colors), color=list(colors.values()), **kwargs
    )


# ---------------------------------------------------------------- rows that wrap


def wrapping_row() -> Any:
    """A row for metrics (or buttons) that wraps onto another line when the screen is too narrow
    for their labels, each as wide as its label and value at least; the items of a line share its
    width. `st.columns` keeps a fixed share per item and cuts the label ("Completion r…") at 1024 px.
    Use it as `with ui.wrapping_row(): st.metric(...)`."""
    return st.container(horizontal=True, gap="small")


# ---------------------------------------------------------------- tables that fit

# Pixels the key columns of a table may take together: the main area's width at 1024x768 with the
# sidebar open, less the row-selection column and the table's border (tests/e2e/test_layout.py
# measures the main area against it). A table shows its key columns first, each with a fixed
# width, so they are on screen without scrolling sideways; the rest follow.
KEY_COLUMNS_WIDTH_BUDGET = 555

# Streamlit's named column widths, in pixels.
COLUMN_WIDTHS = {"small": 75, "medium": 200, "large": 400}


def key_columns_width(column_config: Mapping[str, Any], key_columns: list[str]) -> int:
    """The pixels `key_columns` take by their column configuration (each needs a fixed width:
    a number, or small / medium / large). Raises ValueError for a key column without one."""
    total = 0
    for name in key_columns:
        config = column_config.get(name)
        width = config.get("width") if isinstance(config, Mapping) else None
        if isinstance(width, str):
            width = COLUMN_WIDTHS.get(width)
        if not isinstance(width, int):
            raise ValueError(f"the key column {name!r} has no fixed width")
        total += width
    return total
