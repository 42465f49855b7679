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


def test_scheduler_jobs_of_another_process_show_what_they_left_behind(service):
    at = open_page()
    jobs = table(at, "Job").set_index("Job")
    assert list(jobs.index) == ["lag-sampler", "view-refresh"]
    assert jobs.loc["view-refresh", "Last run (any process)"] == "never"
    assert any("CQRS_PROJECTIONS_IN=none" in i.value for i in at.info)

    service.projections.sample_lag()  # what a runner in another process (a worker) does
    service.projections.refresh_views()
    at.run()

    jobs = table(at, "Job").set_index("Job")
    assert jobs.loc["lag-sampler", "Last run (any process)"].endswith(" s ago")
    assert jobs.loc["view-refresh", "Last run (any process)"].endswith(" s ago")


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
    assert list(jobs.index) == ["alerts", "lag-pruning", "lag-sampler", "rebuilds", "view-refresh"]
    assert (jobs["Runs"] > 0).all() and set(jobs["Outcome"]) == {"ok"}
    assert jobs.loc["lag-sampler", "Last run"].endswith(" s ago")
    assert any("run in this process" in s.value for s in at.success)
