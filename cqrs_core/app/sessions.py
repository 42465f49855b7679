"""Password sign-in that survives a reload, a new tab and a typed URL.

Signing in happens in the Streamlit session (over its WebSocket), which cannot set a cookie. So:

1. The sign-in callback checks the password and opens a session (`SessionStore.open`): a row in
   `console_sessions` with a server-side id and the SHA-256 of a one-time hand-over ticket that
   is good for `TICKET_SECONDS`.
2. The next run of the page sends the ticket to this server's own endpoint (`POST
   /_console/session`, cqrs_core/app/session_routes.py). The endpoint redeems the ticket (once),
   makes the cookie's token (only its SHA-256 is stored) and answers with the session cookie,
   `Set-Cookie: cqrs_session=<token>.<expiry>.<HMAC>`:
   HttpOnly, SameSite=Strict, Path=/, Max-Age, and Secure when the request came over TLS (or
   through a trusted proxy that terminated it). A script on the page never sees the token.
3. Every later page load opens a WebSocket that carries the cookie; `user_from_cookie` checks the
   signature (`server.cookieSecret`: every app process behind a proxy must share it), the expiry,
   and the row (not revoked, not expired), and the caller takes the role from the configured
   users as they are now.
4. Signing out revokes the row (every process then refuses the cookie) and asks the endpoint to
   drop the cookie (`DELETE /_console/session`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

log = logging.getLogger("cqrs_console.sessions")

COOKIE_NAME = "cqrs_session"
ENDPOINT = "_console/session"  # under server.baseUrlPath
TICKET_SECONDS = 60.0  # the hand-over ticket's life: the page sends it at once
RECHECK_SECONDS = 5.0  # how often a signed-in Streamlit session asks whether it was revoked
_TOKEN_BYTES = 32


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _mac(secret: str, payload: str) -> str:
    tag = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(tag).rstrip(b"=").decode()


def sign_cookie(secret: str, token: str, expires_at: datetime) -> str:
    """The cookie's value: the token, its expiry (Unix seconds) and an HMAC of both."""
    payload = f"{token}.{int(expires_at.timestamp())}"
    return f"{payload}.{_mac(secret, payload)}"


def verify_cookie(secret: str, value: str | None, now: datetime) -> str | None:
    """The token of a well-signed, unexpired cookie value; None for anything else."""
    if not value or not secret:
        return None
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    token, expiry, tag = parts
    if not hmac.compare_digest(tag, _mac(secret, f"{token}.{expiry}")):
        return None
    if int(expiry) <= now.timestamp():
        return None
    return token


@dataclass(frozen=True)
class OpenedSession:
    session_id: str  # stays on the server (the Streamlit session's state), to revoke with
    ticket: str  # goes to the page once, to fetch the cookie with


@dataclass(frozen=True)
class LiveSession:
    session_id: str
    user_name: str
    credential: bytes | None
    binding: bytes | None


def credential_of(secret: str, session_id: str, user_name: str, password_hash: str) -> bytes:
    """What ties a session to its user and the password hash it was opened with (an HMAC under
    the cookie secret, so the database alone cannot make one)."""
    message = "\x1f".join(("credential", session_id, user_name, password_hash)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def binding_of(secret: str, token: str, credential: bytes) -> bytes:
    """What ties a cookie's token to its session's credential."""
    return hmac.new(secret.encode(), b"binding\x1f" + _digest(token) + credential, hashlib.sha256).digest()


def session_holds(secret: str, live: LiveSession, token: str | None, password_hash: str) -> bool:
    """Whether a live session still belongs to `live.user_name` with today's `password_hash` (and,
    with `token`, to that cookie): False after a password change, a user removed and added
    again, or a row edited in the database (another user name, another token)."""
    if not secret or live.credential is None:
        return False
    expected = credential_of(secret, live.session_id, live.user_name, password_hash)
    if not hmac.compare_digest(expected, live.credential):
        return False
    if token is None:
        return True
    return live.binding is not None and hmac.compare_digest(binding_of(secret, token, expected), live.binding)


class SessionStore:
    """Sign-in sessions in the `console_sessions` table (migration 0008)."""

    def __init__(
        self,
        engine: Engine,
        max_age_seconds: float,
        secret: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.max_age = timedelta(seconds=max_age_seconds)
        self.secret = secret
        self.clock = clock

    def open(self, user_name: str, password_hash: str) -> OpenedSession:
        """A new session for `user_name` (whose password, stored as `password_hash`, was just
        checked), with its ticket."""
        session_id = secrets.token_urlsafe(_TOKEN_BYTES)
        ticket = secrets.token_urlsafe(_TOKEN_BYTES)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(_PRUNE, {"before": now - timedelta(days=1)})
            conn.execute(
                _OPEN,
                {
                    "id": session_id,
                    "user": user_name,
                    "now": now,
                    "expires": now + self.max_age,
                    "ticket": _digest(ticket),
                    "ticket_until": now + timedelta(seconds=TICKET_SECONDS),
                    "credential": credential_of(self.secret, session_id, user_name, password_hash),
                },
            )
        return OpenedSession(session_id, ticket)

    def redeem(self, ticket: str) -> tuple[str, datetime] | None:
        """Trade a hand-over ticket, once, for a new cookie token and the session's expiry; None
        when the ticket is unknown, used or too old, or the session is revoked or over."""
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        with self.engine.begin() as conn:
            row = conn.execute(
                _REDEEM, {"ticket": _digest(ticket), "token": _digest(token), "now": self.clock()}
            ).one_or_none()
            if row is None:
                return None
            binding = binding_of(self.secret, token, bytes(row.credential or b""))
            conn.execute(_BIND, {"id": row.session_id, "binding": binding})
        return token, row.expires_at

    def live(self, token: str) -> LiveSession | None:
        """The session a cookie token belongs to, if it is neither revoked nor over."""
        with self.engine.connect() as conn:
            row = conn.execute(_LIVE_BY_TOKEN, {"token": _digest(token), "now": self.clock()}).one_or_none()
        return None if row is None else _live(row)

    def live_by_id(self, session_id: str) -> LiveSession | None:
        with self.engine.connect() as conn:
            row = conn.execute(_LIVE_BY_ID, {"id": session_id, "now": self.clock()}).one_or_none()
        return None if row is None else _live(row)

    def revoke_user(self, user_name: str) -> int:
        """End every live session of `user_name` (`cqrs-console auth sign-out`); how many."""
        with self.engine.begin() as conn:
            return conn.execute(_REVOKE_USER, {"user": user_name, "now": self.clock()}).rowcount

    def revoke(self, session_id: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(_REVOKE, {"id": session_id, "now": self.clock()}).rowcount)

    def revoke_token(self, token: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(_REVOKE_TOKEN, {"token": _digest(token), "now": self.clock()}).rowcount)


def _live(row: Any) -> LiveSession:
    credential = None if row.credential is None else bytes(row.credential)
    binding = None if row.binding is None else bytes(row.binding)
    return LiveSession(row.session_id, row.user_name, credential, binding)


_PRUNE = text("DELETE FROM console_sessions WHERE expires_at < :before")
_OPEN = text(
    "INSERT INTO console_sessions"
    " (session_id, user_name, created_at, expires_at, ticket_hash, ticket_until, credential)"
    " VALUES (:id, :user, :now, :expires, :ticket, :ticket_until, :credential)"
)
_REDEEM = text(
    "UPDATE console_sessions SET token_hash = :token, ticket_hash = NULL, ticket_until = NULL"
    " WHERE ticket_hash = :ticket AND ticket_until > :now AND revoked_at IS NULL AND expires_at > :now"
    " RETURNING session_id, credential, expires_at"
)
_BIND = text("UPDATE console_sessions SET binding = :binding WHERE session_id = :id")
_LIVE_BY_TOKEN = text(
    "SELECT session_id, user_name, credential, binding FROM console_sessions"
    " WHERE token_hash = :token AND revoked_at IS NULL AND expires_at > :now"
)
_LIVE_BY_ID = text(
    "SELECT session_id, user_name, credential, binding FROM console_sessions"
    " WHERE session_id = :id AND revoked_at IS NULL AND expires_at > :now"
)
_REVOKE_USER = text(
    "UPDATE console_sessions SET revoked_at = :now, ticket_hash = NULL, ticket_until = NULL"
    " WHERE user_name = :user AND revoked_at IS NULL AND expires_at > :now"
)
_REVOKE = text(
    "UPDATE console_sessions SET revoked_at = :now, ticket_hash = NULL, ticket_until = NULL"
    " WHERE session_id = :id AND revoked_at IS NULL"
)
_REVOKE_TOKEN = text(
    "UPDATE console_sessions SET revoked_at = :now, ticket_hash = NULL, ticket_until = NULL"
    " WHERE token_hash = :token AND revoked_at IS NULL"
)


def handover_script(url: str, ticket: str) -> str:
    """The page's part of step 2: post the ticket to the endpoint; the answer sets the cookie."""
    body = json.dumps({"ticket": ticket})
    return (
        "<script>fetch("
        + json.dumps(url)
        + ',{method:"POST",credentials:"same-origin",headers:{"Content-Type":"application/json"},body:'
        + json.dumps(body)
        + "});</script>"
    )


def drop_script(url: str) -> str:
    return "<script>fetch(" + json.dumps(url) + ',{method:"DELETE",credentials:"same-origin"});</script>'


def endpoint_path(base_url_path: str) -> str:
    base = base_url_path.strip("/")
    return f"/{base}/{ENDPOINT}" if base else f"/{ENDPOINT}"


def cookie_header(value: str, max_age: int, secure: bool) -> str:
    """One Set-Cookie header value with the session cookie's flags."""
    flags = [f"{COOKIE_NAME}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        flags.append("Secure")
    return "; ".join(flags)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return {}
    return data if isinstance(data, dict) else {}
