"""Fixtures shared by the integration tests (the database fixtures live in tests/conftest.py; the
deployment's programs, Chromium and pgbouncer in deployment.py and pooling.py, registered here)."""

import os

import pytest
from deployment import chromium, haproxy, in_browser, openssl  # noqa: F401  (fixtures)
from pooling import pgbouncer  # noqa: F401  (a fixture)
from services import build_service

from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.config import get_settings
from cqrs_core.infra.db import make_engine, stop_embedded_server


@pytest.fixture
def engine(db_url):
    e = make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def store(engine):
    return EventStore(engine)


@pytest.fixture
def service(db_url):
    svc = build_service(db_url)
    yield svc
    svc.close()


@pytest.fixture
def console_env(monkeypatch, tmp_path):
    """`use(url=None)`: the command line's settings: CQRS_DATABASE_URL when given, else the
    embedded server of a data directory of this test's own (stopped at the end)."""
    for name in [k for k in os.environ if k.startswith("CQRS_")]:
        monkeypatch.delenv(name)

    def use(url: str | None = None) -> None:
        monkeypatch.setenv("CQRS_DATA_DIR", str(tmp_path / "data"))  # backups go there by default
        if url:
            monkeypatch.setenv("CQRS_DATABASE_URL", url)
        else:
            monkeypatch.delenv("CQRS_DATABASE_URL", raising=False)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()
    stop_embedded_server(tmp_path / "data")
