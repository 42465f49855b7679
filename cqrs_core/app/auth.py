"""Who is using the console. `none` mode: one local admin (the embedded demo). `password` mode:
users listed in `.streamlit/secrets.toml` with bcrypt hashes and a role:

    [users.alice]
    password_hash = "$2b$12$..."   # cqrs-console hash-password
    role = "researcher"

Wrong passwords are throttled per (user name, client) and per client by `SignInThrottle`,
which keeps its counts in PostgreSQL so that every app process sees the same ones; a client's
own lockout never refuses a right password (see `SignInThrottle`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
from sqlalchemy import Engine, text

from cqrs_core.domain.vocabulary import ROLES, role_holds

DEFAULT_COST = 12  # bcrypt's work factor for new hashes (bcrypt.gensalt's default)
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role_needed: str) -> bool:
        return role_holds(self.role, role_needed)


LOCAL_ADMIN = User("admin", "admin")


class PasswordTooLongError(ValueError):
    """bcrypt only reads the first 72 bytes; a longer password would silently be cut."""


def hash_password(password: str) -> str:
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise PasswordTooLongError(
            f"choose a password of at most {MAX_PASSWORD_BYTES} bytes (bcrypt ignores the rest)"
        )
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=DEFAULT_COST)).decode()


_BCRYPT_HASH = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")
# Salt and digest of some bcrypt hash: with any cost in front it is a well-formed hash that
# matches no password, and checking against it costs exactly that cost (nothing to compute here).
_DUMMY_TAIL = "QiGPnVEt5PTQ5vhwcip4d.ZPAGdnnu5LXtEgAR3hgRY/UgS5zxbqe"


def hash_cost(stored: str) -> int | None:
    """The work factor of a bcrypt hash ("$2b$12$…" -> 12), None if it is not one."""
    match = _BCRYPT_HASH.fullmatch(stored.strip())
    return int(match[1]) if match and 4 <= int(match[1]) <= 31 else None


def _stored_hash(entry: Any) -> str:
    return str(entry.get("password_hash", "")) if isinstance(entry, Mapping) else ""


def password_hash_of(users: Mapping[str, Any], name: str) -> str:
    """The configured bcrypt hash of `name` ("" for no such user): what a session is bound to."""
    return _stored_hash(users.get(name))


def dummy_hash(users: Mapping[str, Any]) -> bytes:
    """What an unknown user's password is checked against: a hash with the highest cost among the
    configured ones (the default cost when there are none), so an unknown user name costs as much
    time as a known one and user names cannot be told apart by how long the answer takes."""
    costs = [cost for entry in users.values() if (cost := hash_cost(_stored_hash(entry))) is not None]
    return f"$2b${max(costs, default=DEFAULT_COST):02d}${_DUMMY_TAIL}".encode()


def authenticate(users: Mapping[str, Any], name: str, password: str) -> User | None:
    """The user if `password` matches the stored bcrypt hash, else None (same answer, and the
    same bcrypt work, for an unknown user, a malformed hash and a wrong password)."""
    entry: Any = users.get(name) if name else None
    stored = _stored_hash(entry)
    candidate = password.encode()[:MAX_PASSWORD_BYTES]
    if hash_cost(stored) is None or not password:
        bcrypt.checkpw(candidate or b"x", dummy_hash(users))
        return None
    try:
        ok = bcrypt.checkpw(candidate, stored.strip().encode())
    except ValueError:  # a hash that looks right but is not (bad salt)
        return None
    role = entry.get("role", "analyst")
    if not ok or role not in ROLES:
        return None
    return User(name, role)


def users_problem(users: Mapping[str, Any]) -> str | None:
    """One line saying what is wrong with the [users] of secrets.toml (a role that is not one of
    ours, an entry that is not a table), None when nothing is. A misspelt role must not look like
    a wrong password: the console refuses the configuration instead (app.py, `cqrs-console serve`)."""
    for name, entry in users.items():
        if not isinstance(entry, Mapping):
            return f"secrets.toml: [users.{name}] must be a table with password_hash and role."
        role = entry.get("role", "analyst")
        if role not in ROLES:
            return (
                f"secrets.toml: user {name!r} has the role {str(role)!r}, which is not one of "
                f"{', '.join(ROLES)}."
            )
    return None


AUTH_SETTINGS = ("redirect_uri", "cookie_secret")  # [auth] itself
PROVIDER_SETTINGS = ("client_id", "client_secret", "server_metadata_url")  # [auth] or [auth.default]


def auth_section_problem(auth: Any) -> str | None:
    """One line saying what the [auth] section of secrets.toml lacks for `CQRS_AUTH_MODE=oidc`
    (st.login with its default provider), None when nothing. Without it every Sign in click
    would end in Streamlit's redacted error: the console refuses the configuration instead."""
    if not isinstance(auth, Mapping):
        return (
            "secrets.toml has no [auth] section, which CQRS_AUTH_MODE=oidc needs: redirect_uri, "
            "cookie_secret, client_id, client_secret and server_metadata_url (docs/DEPLOY.md)."
        )
    default = auth.get("default")
    provider = default if isinstance(default, Mapping) else auth
    missing = [key for key in AUTH_SETTINGS if not str(auth.get(key) or "").strip()] + [
        key for key in PROVIDER_SETTINGS if not str(provider.get(key) or "").strip()
    ]
    if missing:
        return (
            f"secrets.toml: [auth] has no {', '.join(missing)}, which CQRS_AUTH_MODE=oidc needs "
            "(docs/DEPLOY.md)."
        )
    return None


def as_configured(users: Mapping[str, Any], user: User) -> User | None:
    """`user` as the configured users say now: None when the entry was removed, lost its hash or
    has an unknown role; with the configured role when it changed."""
    entry = users.get(user.name)
    if not isinstance(entry, Mapping) or hash_cost(_stored_hash(entry)) is None:
        return None
    role = entry.get("role", "analyst")
    if role not in ROLES:
        return None
    return user if role == user.role else User(user.name, role)


# ---------------------------------------------------------------- throttling wrong passwords


LOCAL_CLIENT = "localhost"  # Streamlit reports no address for loopback connections
_MAX_KEY_CHARS = 200  # user names are typed by anyone: keep the stored key bounded


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures: int = 5  # per (user name, client)
    client_max_failures: int = 20  # per client, whatever user names it tries
    window_seconds: float = 900.0  # counts are forgotten after this long without a failure
    lockout_seconds: float = 30.0  # the first lockout; it doubles with each further failure
    max_lockout_seconds: float = 900.0

    @classmethod
    def from_settings(cls, settings: Any) -> ThrottlePolicy:
        return cls(
            settings.sign_in_max_failures,
            settings.sign_in_client_max_failures,
            settings.sign_in_window_seconds,
            settings.sign_in_lockout_seconds,
            settings.sign_in_max_lockout_seconds,
        )


@dataclass(frozen=True)
class Admission:
    """What `SignInThrottle.admit` decided about one attempt."""

    wait: int | None = None  # this (user name, client) is locked out: refused unchecked for this many seconds
    client_wait: int | None = None  # the client is locked out: only a right password still signs in


@dataclass(frozen=True)
class SignInResult:
    """One sign-in attempt: `user` when it succeeded, else `wait` (seconds) when refused for too
    many failures, else neither (an unknown user name or a wrong password)."""

    user: User | None = None
    wait: int | None = None


class SignInThrottle:
    """Counts sign-in attempts per (user name, client) and per client in the `sign_in_throttle`
    table, so the counts hold across app processes.

    `admit` counts an attempt as failed *before* the password is checked and `succeeded` takes
    it back: parallel attempts (many sessions submitting at once) cannot slip past the limit
    between checking it and recording a failure.

    A locked (user name, client) is refused without checking the password: this is what bounds
    guessing. A locked client is not: many people can share one client (every loopback peer is
    "localhost", a NAT or proxy is one address), so anyone could lock everyone else out, the last
    admin included. Its password is still checked (the same bcrypt work as always) and a right
    one signs in; a wrong one or an unknown user name is answered with the lockout. Lockouts are
    never per user name alone, so guessing from one client never locks out the same user from
    another; `cqrs-console auth unlock` clears a lockout.
    """

    def __init__(
        self,
        engine: Engine,
        policy: ThrottlePolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.policy = policy or ThrottlePolicy()
        self.clock = clock

    def sign_in(
        self, users: Mapping[str, Any], user_name: str, password: str, client: str | None
    ) -> SignInResult:
        """One attempt, throttled: the user when the password is right and this (user name,
        client) is not locked out, whether or not the client is."""
        admission = self.admit(user_name, client)
        if admission.wait is not None:
            return SignInResult(wait=admission.wait)
        user = authenticate(users, user_name, password)
        if user is None:
            return SignInResult(wait=admission.client_wait)
        self.succeeded(user_name, client)
        return SignInResult(user=user)

    def admit(self, user_name: str, client: str | None) -> Admission:
        """`wait` set: this (user name, client) is locked out; nothing is counted and the password
        must not be checked. Otherwise check it: the attempt counts as failed (for the user name
        and the client) until `succeeded`, and `client_wait` says whether the client is locked."""
        now = self.clock()
        keys = self._keys(user_name, client)
        limits = (self.policy.max_failures, self.policy.client_max_failures)
        with self.engine.begin() as conn:
            conn.execute(_PRUNE, {"now": now, "stale_before": now - self._window})
            rows = []
            for key in keys:  # always the user row first, then the client row: no deadlocks
                conn.execute(_ENSURE, key)
                rows.append(conn.execute(_LOCK, key).one())
            user_row = rows[0]
            if user_row.locked_until is not None and user_row.locked_until > now:
                return Admission(wait=self._seconds_until(user_row.locked_until, now))
            client_until = None
            for key, row, limit in zip(keys, rows, limits, strict=True):
                stale = row.last_failure_at is None or row.last_failure_at < now - self._window
                failures = (0 if stale else row.failures) + 1
                locked_until = self._locked_until(now, failures, limit)
                if key["scope"] == "client" and row.locked_until is not None and row.locked_until > now:
                    locked_until = max(locked_until or now, row.locked_until)  # a lockout never shortens
                    client_until = locked_until  # locked before this attempt, as a user's is
                conn.execute(_RECORD, {**key, "failures": failures, "now": now, "locked_until": locked_until})
        return Admission(client_wait=None if client_until is None else self._seconds_until(client_until, now))

    def succeeded(self, user_name: str, client: str | None) -> None:
        """The password was right: forget the (user name, client) record and take the attempt
        back from the client's count."""
        user_key, client_key = self._keys(user_name, client)
        with self.engine.begin() as conn:
            conn.execute(_FORGET_USER, user_key)
            conn.execute(_UNCOUNT_CLIENT, {**client_key, "limit": self.policy.client_max_failures})

    def unlock(self, user_name: str | None = None, client: str | None = None) -> int:
        """Clear lockouts: `user_name`'s from every client, or from `client` only; a `client`'s
        own lockout and, without `user_name`, every user's from it. Returns the records removed."""
        if user_name is None and client is None:
            raise ValueError("name a user or a client to unlock")
        with self.engine.begin() as conn:
            return conn.execute(
                _UNLOCK, {"user": None if user_name is None else user_name[:_MAX_KEY_CHARS], "client": client}
            ).rowcount

    def lockouts(self) -> list[dict[str, Any]]:
        """Every record that is locked now: scope, user_name ('' for a client's own), client,
        failures, locked_until."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(_LOCKED, {"now": self.clock()})]

    @staticmethod
    def _seconds_until(moment: datetime, now: datetime) -> int:
        return max(1, math.ceil((moment - now).total_seconds()))

    @property
    def _window(self) -> timedelta:
        return timedelta(seconds=self.policy.window_seconds)

    def _locked_until(self, now: datetime, failures: int, limit: int) -> datetime | None:
        if failures < limit:
            return None
        seconds = self.policy.lockout_seconds * 2 ** min(failures - limit, 30)
        return now + timedelta(seconds=min(seconds, self.policy.max_lockout_seconds))

    @staticmethod
    def _keys(user_name: str, client: str | None) -> tuple[dict[str, str], dict[str, str]]:
        client = client or LOCAL_CLIENT
        return (
            {"scope": "user", "user": user_name[:_MAX_KEY_CHARS], "client": client},
            {"scope": "client", "user": "", "client": client},
        )


_PRUNE = text(
    "DELETE FROM sign_in_throttle WHERE (last_failure_at IS NULL OR last_failure_at < :stale_before)"
    " AND (locked_until IS NULL OR locked_until <= :now)"
)
_ENSURE = text(
    "INSERT INTO sign_in_throttle (scope, user_name, client) VALUES (:scope, :user, :client) ON CONFLICT DO NOTHING"
)
_LOCK = text(
    "SELECT failures, last_failure_at, locked_until FROM sign_in_throttle"
    " WHERE scope = :scope AND user_name = :user AND client = :client FOR UPDATE"
)
_RECORD = text(
    "UPDATE sign_in_throttle SET failures = :failures, last_failure_at = :now, locked_until = :locked_until"
    " WHERE scope = :scope AND user_name = :user AND client = :client"
)
_FORGET_USER = text(
    "DELETE FROM sign_in_throttle WHERE scope = :scope AND user_name = :user AND client = :client"
)
_UNCOUNT_CLIENT = text(
    "UPDATE sign_in_throttle SET failures = greatest(failures - 1, 0),"
    " locked_until = CASE WHEN failures - 1 < :limit THEN NULL ELSE locked_until END"
    " WHERE scope = :scope AND user_name = :user AND client = :client"
)
_UNLOCK = text(
    "DELETE FROM sign_in_throttle WHERE"
    " (scope = 'user' AND (CAST(:user AS text) IS NULL OR user_name = :user)"
    "  AND (CAST(:client AS text) IS NULL OR client = :client))"
    " OR (scope = 'client' AND client = :client)"
)
_LOCKED = text(
    "SELECT scope, user_name, client, failures, locked_until FROM sign_in_throttle"
    " WHERE locked_until > :now ORDER BY locked_until DESC"
)
