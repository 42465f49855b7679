"""What the AppTest tests of the operator and presenter pages share: the app pointed at a fresh
database without a projection runner of its own, a service of the test's own to send commands
and run projections, opening a page (optionally as a given user), and finding a table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from cqrs_core.app.auth import User
from cqrs_core.infra.config import get_settings, load_settings
from cqrs_core.service import CQRSService, CQRSServiceBuilder

APP = Path(__file__).resolve().parents[2] / "app.py"


def app_and_service(app_url: str, db_url: str, monkeypatch) -> Iterator[CQRSService]:
    """Body of a `service` fixture: the app reads `app_url`; the test's service uses `db_url`."""
    monkeypatch.setenv("CQRS_DATABASE_URL", app_url)
    monkeypatch.setenv("CQRS_RUN_PROJECTIONS", "false")
    get_settings.cache_clear()
    st.cache_resource.clear()
    svc = CQRSServiceBuilder(load_settings()).with_database_url(db_url).with_migrations(False).build()
    yield svc
    svc.projections.close()
    svc.close()
    st.cache_resource.clear()  # releases the app's runtime before the database is dropped
    get_settings.cache_clear()


def open_page(page: str, user: User | None = None, timeout: float = 30) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    if user is not None:
        at.session_state["user"] = user
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def table(at: AppTest, column: str):
    """The first table showing `column` (tables have no keys in AppTest)."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a {column!r} column")
