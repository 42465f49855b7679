"""Fixtures shared by the integration tests (the database fixtures live in tests/conftest.py; the
deployment's programs, Chromium and pgbouncer in deployment.py and pooling.py, registered here)."""

import pytest
from deployment import chromium, haproxy, in_browser, openssl  # noqa: F401  (fixtures)
from pooling import pgbouncer  # noqa: F401  (a fixture)
from services import build_service

from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.db import make_engine


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
