"""Overview: KPIs, overall health with reasons, recent activity, the stale-data banner."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import os
import socket
import time
import uuid

import pytest
from page_harness import (  # noqa: F401
    APP,
    app_env,
    create_workflow,
    rerun,
    run_page,
    seed,
    service,
    shared_db_url,
    texts,
)
from sqlalchemy import make_url
from streamlit.testing.v1 import AppTest

from cqrs_core import CommandFactory
from cqrs_core.app.ui import md_escape
from cqrs_core.infra.config import get_settings
from cqrs_core.infra.db import redact

HOSTILE_TITLE = "<script>alert('xss')</script> **bold** [link](javascript:alert(1))"


def metric_values(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def health_rows(at: AppTest) -> dict[str, tuple[str, str]]:
    table = next(d.value for d in at.dataframe if "Component" in d.value.columns)
    return {row.Component: (row.Status, row.Detail) for row in table.itertuples()}


def plant(svc) -> dict[str, str]:
    alice = CommandFactory(actor="alice")
    done = create_workflow(svc, title="Finished study")  # 3 events
    svc.execute_command(alice.start_workflow(workflow_id=done))
    svc.execute_command(alice.complete_workflow(workflow_id=done))
    dropped = create_workflow(svc, title="Dropped study")  # 2 events
    svc.execute_command(alice.cancel_workflow(workflow_id=dropped, reason="out of scope"))
    search = str(uuid.uuid4())
    busy = create_workflow(
        svc,
        title="Busy study",  # 5 events
        tasks=[{"name": "Search", "task_id": search}, {"name": "Read"}],
    )
    svc.execute_command(alice.start_workflow(workflow_id=busy))
    svc.execute_command(alice.start_task(workflow_id=busy, task_id=search))
    latest = create_workflow(svc, title=HOSTILE_TITLE)  # 1 event
    return {"latest": latest}


@pytest.fixture(scope="module")
def seeded(shared_db_url):
    return shared_db_url, seed(shared_db_url, plant)


def test_kpis_count_workflows_by_status_completion_rate_active_tasks_and_events(seeded, app_env):
    url, _ = seeded
    app_env(url)

    at = run_page()

    metrics = metric_values(at)
    assert metrics["Workflows"] == "4"
    assert metrics["Completion rate"] == "50%"  # 1 completed of 2 finished
    assert metrics["Active tasks"] == "1"
    assert metrics["Events today"] == "11"
    assert [metrics[s] for s in ("Draft", "Running", "Paused", "Completed", "Failed", "Cancelled")] == [
        "1",
        "1",
        "0",
        "1",
        "0",
        "1",
    ]
    assert not any("No workflows yet" in i.value for i in at.info)


def test_today_and_the_activity_times_follow_the_time_zone_and_say_which(seeded, app_env):
    url, _ = seeded
    app_env(url, time_zone="Europe/Paris")  # the browser tells none under AppTest: the setting

    at = run_page()

    assert f"“Today” and times on this page are in {md_escape('Europe/Paris')}." in texts(at)
    assert "Newest first by when each event happened (Europe/Paris)." in texts(at)
    events = next(m for m in at.metric if m.label == "Events today")
    assert "since midnight (Europe/Paris), by the time they happened" in events.help


def test_health_lists_each_component_and_each_projection(seeded, app_env):
    url, _ = seeded
    app_env(url)

    at = run_page()

    rows = health_rows(at)
    assert {"database", "migrations", "event log", "scheduler", "view freshness"} <= set(rows)
    assert {"projection workflow_summary", "projection task_summary", "projection workflow_activity"} <= set(
        rows
    )
    assert rows["projection workflow_summary"][0] == "healthy"
    assert rows["projection workflow_summary"][1].startswith("stopped, 0 events / 0.0 s behind")
    assert any("All systems healthy" in s.value for s in at.success)
    assert not any("Data may be out of date" in w.value for w in at.warning)


def test_recent_activity_shows_what_happened_verbatim_and_opens_the_workflow(seeded, app_env):
    url, ids = seeded
    app_env(url)

    at = run_page()

    activity = next(d for d in at.dataframe if "workflow" in d.value.columns)
    assert activity.value["workflow"].iloc[0] == HOSTILE_TITLE
    assert activity.value["what"].iloc[0] == "WorkflowCreated"
    at.session_state[activity.key] = {"selection": {"rows": [0], "columns": []}}
    rerun(at)
    assert at.query_params.get("workflow") == ids["latest"]  # its detail, on the Workflows page
    assert [t.value for t in at.title] == [md_escape(HOSTILE_TITLE)]


def test_sidebar_shows_the_signed_in_user_connection_and_health(seeded, app_env):
    url, _ = seeded
    app_env(url)

    at = run_page()

    sidebar = " ".join(
        e.value for part in (at.sidebar.markdown, at.sidebar.caption, at.sidebar.text) for e in part
    )
    assert "admin" in sidebar and "CQRS_AUTH_MODE=none" in sidebar
    assert "Healthy" in sidebar
    # Where the data lives in a few words (the whole redacted URL in its tooltip), database name escaped.
    where = make_url(url)
    socket_or_host = "a local socket" if not where.host else f"{where.host}:{where.port or 5432}"
    [connection] = [c for c in at.sidebar.caption if c.value.startswith("Connection: ")]
    assert connection.value == f"Connection: {md_escape(f'database {where.database} on {socket_or_host}')}"
    assert connection.help == md_escape(redact(url))
    # Which app process drew the page (several may run behind a proxy), its host name escaped.
    assert [c.value for c in at.sidebar.caption if c.value.startswith("Served by")] == [
        f"Served by {md_escape(socket.gethostname())} · pid {os.getpid()}"
    ]


def test_paused_or_lagging_projections_degrade_health_and_show_the_stale_banner(db_url, app_env, service):
    service.projections.pause("task_summary")
    create_workflow(service)  # written, never projected: the read models fall behind
    app_env(db_url, stale_lag_threshold_seconds="0.05")
    time.sleep(0.2)  # the unprojected event grows older than the threshold: the age is what is tested

    at = run_page()

    rows = health_rows(at)
    assert rows["projection task_summary"][0] == "degraded" and rows["projection task_summary"][1].startswith(
        "paused"
    )
    assert rows["projection workflow_summary"][0] == "degraded"
    warnings = " ".join(w.value for w in at.warning)
    assert "Data may be out of date" in warnings
    assert "Degraded" in warnings and "projection task_summary: paused" in warnings
    # The sidebar says which parts in one short line, the details in its tooltip.
    [attention] = [c for c in at.sidebar.caption if c.value.startswith("Needs attention: ")]
    assert "projections" in attention.value and "paused" not in attention.value
    assert md_escape("task_summary paused") in attention.help
    assert not [c for c in at.sidebar.caption if "paused" in c.value]


def test_empty_database_says_what_to_do(db_url, app_env):
    app_env(db_url)

    at = run_page()

    assert metric_values(at)["Workflows"] == "0"
    assert any("No workflows yet" in i.value for i in at.info)
    assert "Nothing has happened yet." in texts(at)


def test_invalid_setting_is_shown_as_one_sentence(monkeypatch, app_env):
    app_env("postgresql+psycopg2://postgres@127.0.0.1:1/x")
    monkeypatch.setenv("CQRS_COMMAND_TIMEOUT", "-1")
    get_settings.cache_clear()

    at = AppTest.from_file(str(APP), default_timeout=30).run()

    assert not at.exception
    assert [e.value for e in at.error] == [
        "Invalid setting CQRS_COMMAND_TIMEOUT: Input should be greater than 0"
    ]


def test_a_faulted_projections_last_error_is_shown_as_typed_not_as_markdown(db_url, app_env, service):
    from cqrs_core.domain.events import stream_id_for
    from cqrs_core.eventlog.store import EventMetadata, NewEvent

    hostile = "[link](https://evil) ![img](https://evil/x.png)"
    service.projections.set_failure_policy("task_summary", "fault")
    # An event whose payload the projection quotes in its error: a task id that is no task id.
    service.event_store.append(
        stream_id_for(str(uuid.uuid4())),
        0,
        [NewEvent("TaskStarted", {"task_id": hostile, "attempt": 1})],
        EventMetadata(actor="mallory", correlation_id=uuid.uuid4()),
    )
    service.projections.catch_up(timeout=20)
    service.projections.close()
    app_env(db_url)

    at = run_page()

    banner = next(e.value for e in at.error if e.value.startswith("Unhealthy"))
    assert hostile not in banner and "](https://evil" not in banner  # no markdown link or image
    assert md_escape(hostile) in banner  # every markdown character escaped: shown as typed
    assert "projection task_summary: " + md_escape("faulted: position") in banner
    assert health_rows(at)["projection task_summary"][1].count(hostile) == 1  # the table shows it verbatim
