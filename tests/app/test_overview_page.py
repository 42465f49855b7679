from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cqrs_core.config import get_settings
from cqrs_core.db import make_engine
from cqrs_core.domain.events import WorkflowCreated, stream_id_for
from cqrs_core.event_store import EventMetadata, EventStore, NewEvent

APP = Path(__file__).resolve().parents[2] / "app.py"


@pytest.fixture
def app_env(monkeypatch):
    """Point the app at `url` with fresh settings and no cached runtime from an earlier test."""

    def use(url: str) -> None:
        monkeypatch.setenv("CQRS_DATABASE_URL", url)
        get_settings.cache_clear()
        st.cache_resource.clear()

    yield use
    st.cache_resource.clear()  # releases the runtime (disposes its engine) before the database is dropped
    get_settings.cache_clear()


def append_workflows(url: str, n: int) -> None:
    engine = make_engine(url)
    try:
        store = EventStore(engine)
        for i in range(n):
            created = WorkflowCreated(
                workflow_id=f"wf-{i}", title=f"Study {i}", research_question="Does it work?",
                methodology="systematic_review", tags=[], priority="medium", owner="alice", due_date=None,
            )
            store.append(
                stream_id_for(created.workflow_id), 0,
                [NewEvent(created.event_type, created.to_payload())], EventMetadata(actor="alice"),
            )
    finally:
        engine.dispose()


def run_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric_values(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_shows_event_count_head_position_and_latency(db_url, app_env):
    append_workflows(db_url, 2)
    app_env(db_url)

    at = run_app()

    metrics = metric_values(at)
    assert metrics["Events"] == "2"
    assert metrics["Head position"] == "2"
    assert metrics["Database latency"].endswith(" ms")
    health = at.dataframe[0].value
    assert list(health["Component"]) == ["database", "migrations", "event log"]
    assert list(health["Status"]) == ["healthy", "healthy", "healthy"]
    assert not [i.value for i in at.info if "No events yet" in i.value]


def test_sidebar_shows_connection_and_health(db_url, app_env):
    app_env(db_url)

    at = run_app()

    sidebar_text = " ".join(m.value for m in at.sidebar.markdown) + " " + " ".join(c.value for c in at.sidebar.caption)
    assert "Healthy" in sidebar_text
    assert db_url.rsplit("/", 1)[-1] in sidebar_text  # the database name of the redacted URL


def test_empty_log_says_what_to_do(db_url, app_env):
    app_env(db_url)

    at = run_app()

    assert metric_values(at)["Events"] == "0"
    assert any("No events yet" in i.value for i in at.info)


def test_invalid_setting_is_shown_as_one_sentence(monkeypatch, app_env):
    app_env("postgresql+psycopg2://postgres@127.0.0.1:1/x")
    monkeypatch.setenv("CQRS_COMMAND_TIMEOUT", "-1")
    get_settings.cache_clear()

    at = AppTest.from_file(str(APP), default_timeout=30).run()

    assert not at.exception
    assert [e.value for e in at.error] == ["Invalid setting CQRS_COMMAND_TIMEOUT: Input should be greater than 0"]
