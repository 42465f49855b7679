"""The System page: throughput and latency of the commands and queries this app process ran,
errors by category, the cache, rate-limit refusals, the scheduler's jobs, and the settings in
effect with secrets masked."""

import time

import operator_pages
import pytest
import streamlit as st
from operator_pages import app_and_service, table
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest
from waiting import wait_until

from cqrs_core.infra.config import get_settings
from cqrs_core.infra.errors import AuthorizationError
from cqrs_core.write.commands import CommandFactory

PAGE = "pages/system.py"
PASSWORD = "hunter2-not-for-screens"


@pytest.fixture
def service(db_url, monkeypatch):
    # A password in the URL (the test server trusts local connections, so any password works):
    # the page must never show it.
    url = make_url(db_url).set(password=PASSWORD).render_as_string(hide_password=False)
    yield from app_and_service(url, db_url, monkeypatch)


def open_page() -> AppTest:
    return operator_pages.open_page(PAGE, timeout=30)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_metrics_reflect_the_commands_this_process_executed(service):
    at = open_page()
    app_service = at.session_state["runtime"].service  # the app's own service: its metrics are shown
    researcher = CommandFactory(actor="alice", role="researcher")
    for i in range(3):
        app_service.execute_command(
            researcher.create_research_workflow(
                title=f"Study {i}", research_question="Why?", methodology="case_study"
            )
        )
    with pytest.raises(AuthorizationError):
        app_service.execute_command(researcher.pause_projection(projection="task_summary"))
    time.sleep(0.6)  # the page measures throughput between samples at least half a second apart

    at.run()

    assert metrics(at)["Commands"] == "4"
    commands = table(at, "Command").set_index("Command")
    assert commands.loc["CreateResearchWorkflow", "Count"] == 3
    assert commands.loc["CreateResearchWorkflow", "Errors"] == 0
    assert commands.loc["CreateResearchWorkflow", "p95 (ms)"] > 0
    assert commands.loc["PauseProjection", "Errors"] == 1
    assert table(at, "Category").set_index("Category").loc["authorization", "Commands"] == 1
    assert "GetMetrics" in set(table(at, "Query")["Query"])
    assert metrics(at)["Refused commands"] == "0"
    assert metrics(at)["Cache hit rate"].endswith("%")
    assert metrics(at)["Commands/s"] != "—"  # a second sample gives a rate
    assert len(at.get("vega_lite_chart")) >= 1  # the latency percentiles chart


def test_settings_in_effect_mask_the_database_password(service):
    at = open_page()

    settings = table(at, "Setting").set_index("Setting")
    url = settings.loc["CQRS_DATABASE_URL"]
    assert url["Source"] == "environment" and "***" in url["Value"] and PASSWORD not in url["Value"]
    assert settings.loc["CQRS_RUN_PROJECTIONS", "Value"] == "False"
    assert settings.loc["CQRS_CHECKPOINT_INTERVAL", "Source"] == "default"
    shown = [str(v) for frame in at.dataframe for v in frame.value.to_numpy().ravel()]
    shown += [e.value for e in at.markdown] + [e.value for e in at.caption]
    assert not [text for text in shown if PASSWORD in text]


def test_settings_and_health_show_webhook_urls_without_their_tokens(service, monkeypatch):
    monkeypatch.setenv(
        "CQRS_ALERT_WEBHOOK_URL", "https://hooks.example.com/services/T1/B2/s3cret-path?sig=s3cret-q"
    )
    monkeypatch.setenv("CQRS_ALERT_WEBHOOK_URL_CRITICAL", "https://eo12ab34s3cret.m.pipedream.net/")
    get_settings.cache_clear()

    at = open_page()

    settings = table(at, "Setting").set_index("Setting")
    assert settings.loc["CQRS_ALERT_WEBHOOK_URL", "Value"] == "https://hooks.example.com/***?***"
    assert settings.loc["CQRS_ALERT_WEBHOOK_URL_CRITICAL", "Value"] == "https://***.m.pipedream.net/"
    assert settings.loc["CQRS_ALERT_WEBHOOK_URL_WARNING", "Value"] == "—"
    shown = [str(v) for frame in at.dataframe for v in frame.value.to_numpy().ravel()]
    shown += [e.value for e in at.markdown] + [e.value for e in at.caption]
    assert not [text for text in shown if "s3cret" in text]


def test_scheduler_jobs_of_another_process_show_what_they_left_behind(service):
    at = open_page()
    jobs = table(at, "Job").set_index("Job")
    assert list(jobs.index) == ["lag-sampler", "view-refresh", "verification"]
    assert jobs.loc["view-refresh", "Last run (any process)"] == "never"
    assert jobs.loc["verification", "Last run (any process)"] == "never"
    assert any("CQRS_PROJECTIONS_IN=none" in i.value for i in at.info)

    service.projections.sample_lag()  # what a runner in another process (a worker) does
    service.projections.refresh_views()
    service.projections.verify_sample()
    at.run()

    jobs = table(at, "Job").set_index("Job")
    assert jobs.loc["lag-sampler", "Last run (any process)"].endswith(" s ago")
    assert jobs.loc["view-refresh", "Last run (any process)"].endswith(" s ago")
    assert jobs.loc["verification", "Last run (any process)"].endswith(" s ago")


def test_scheduler_jobs_of_this_process_show_their_recorded_runs(service, monkeypatch):
    monkeypatch.setenv("CQRS_RUN_PROJECTIONS", "true")
    get_settings.cache_clear()
    st.cache_resource.clear()
    at = open_page()

    def every_job_ran() -> bool:  # the jobs start at once; the page shows their first runs
        at.run()
        return (table(at, "Job").set_index("Job")["Runs"] > 0).all()

    wait_until(every_job_ran, 20, "every scheduler job to record a run", interval=0.2)
    jobs = table(at, "Job").set_index("Job")
    assert list(jobs.index) == [
        "alerts",
        "lag-pruning",
        "lag-sampler",
        "rebuilds",
        "verification",
        "view-refresh",
    ]
    assert (jobs["Runs"] > 0).all() and set(jobs["Outcome"]) == {"ok"}
    assert jobs.loc["lag-sampler", "Last run"].endswith(" s ago")
    assert any("run in this process" in s.value for s in at.success)


def test_without_a_read_replica_the_page_says_queries_read_the_primary(service):
    at = open_page()

    assert "Queries read from the primary: CQRS_READ_DATABASE_URL is not set." in [
        c.value for c in at.caption
    ]
    assert "Behind (bytes)" not in metrics(at)


@pytest.fixture
def replica_service(replicated_cluster, replica_db, monkeypatch):
    """The app reads from the standby; the test's service writes to the primary."""
    # A password in the standby's URL (the test servers trust local connections): never shown.
    standby = make_url(replica_db.standby_url).set(password=PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("CQRS_READ_DATABASE_URL", standby)
    yield from app_and_service(replica_db.primary_url, replica_db.primary_url, monkeypatch)


def test_the_read_replicas_lag_shows_in_bytes_and_seconds(replicated_cluster, replica_service):
    at = open_page()

    def caught_up() -> bool:  # what the primary wrote a moment ago may still be on its way
        at.run()
        shown = metrics(at)
        return shown["Replay"] == "running" and shown["Behind (bytes)"] == "0"

    wait_until(caught_up, 20, "the page to show the standby caught up", interval=0.3)
    shown = metrics(at)
    assert shown["Behind (seconds)"] == "0.0" and shown["Queries read from"] == "the replica"
    assert any(s.value.startswith("Read replica: streaming") for s in at.success)
    captions = [c.value.replace("\\", "") for c in at.caption]  # shown markdown-escaped
    assert any("Measured on the replica postgresql+psycopg2://postgres:***@" in c for c in captions)
    shown_text = [str(v) for frame in at.dataframe for v in frame.value.to_numpy().ravel()]
    shown_text += [e.value.replace("\\", "") for e in (*at.markdown, *at.caption)]
    assert not [t for t in shown_text if PASSWORD in t]

    replicated_cluster.pause_replay()
    # A change on the primary: the paused standby receives its WAL but does not replay it.
    replica_service.execute_command(
        CommandFactory(actor="alice").create_research_workflow(
            title="While replay is paused", research_question="Why?", methodology="case_study"
        )
    )

    def behind() -> bool:
        at.run()
        shown = metrics(at)
        return shown["Replay"] == "paused" and shown["Behind (bytes)"] not in ("0", "—")

    wait_until(behind, 20, "the page to show the paused standby behind", interval=0.3)
    shown = metrics(at)
    assert int(shown["Behind (bytes)"].replace(",", "")) > 0
    assert float(shown["Behind (seconds)"].replace(",", "")) > 0
    assert any("replay paused" in w.value for w in at.warning)

    replicated_cluster.resume_replay()

    wait_until(caught_up, 20, "the page to show the standby caught up again", interval=0.3)
    assert not at.exception
