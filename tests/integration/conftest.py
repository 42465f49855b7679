"""Fixtures shared by the integration tests (the database fixtures live in tests/conftest.py)."""

import pytest
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
