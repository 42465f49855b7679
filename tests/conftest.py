"""Test fixtures: one real PostgreSQL server per test session (embedded by default, or the
server of CQRS_TEST_DATABASE_URL), one migrated template database, and a fresh database
copied from the template for every test that asks for `db_url`."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cqrs_core.db import migrate, start_embedded_server, stop_embedded_server

DATA = Path(__file__).parent / "data"


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
