"""hypothesis fuzzing of every command and query model through the public factories and the
service: random and adversarial values only ever produce typed validation errors (or, for a
well-formed command on a workflow that does not exist, not-found), never another exception,
never a partial write."""

import logging
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import CQRSError, NotFoundError, ValidationError

ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=60),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "'; DROP TABLE events; --",
            "a & b | !c",
            "x" * 20_000,
            str(uuid.uuid4()),
            "2026-13-45",
            "running",
            "exploratory",
        ]
    ),
    st.lists(st.text(max_size=20), max_size=12),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)

COMMANDS = {
    "create_research_workflow": [
        "title",
        "research_question",
        "methodology",
        "tags",
        "priority",
        "due_date",
        "tasks",
    ],
    "update_workflow_details": ["workflow_id", "title", "priority", "tags", "due_date"],
    "start_workflow": ["workflow_id"],
    "pause_workflow": ["workflow_id", "reason"],
    "resume_workflow": ["workflow_id"],
    "complete_workflow": ["workflow_id", "reason"],
    "fail_workflow": ["workflow_id", "reason"],
    "cancel_workflow": ["workflow_id", "reason"],
    "add_task": ["workflow_id", "name", "kind", "assignee", "estimate_minutes", "depends_on"],
    "remove_task": ["workflow_id", "task_id"],
    "start_task": ["workflow_id", "task_id"],
    "complete_task": ["workflow_id", "task_id", "result_summary"],
    "fail_task": ["workflow_id", "task_id", "error"],
    "retry_task": ["workflow_id", "task_id"],
}
QUERIES = {
    "get_workflow": ["workflow_id"],
    "get_workflow_list": [
        "page",
        "page_size",
        "status",
        "sort",
        "owner",
        "tags",
        "created_from",
        "descending",
    ],
    "search_workflows": ["text", "page", "methodology"],
    "get_statistics": ["date_from", "date_to"],
    "get_event_log": ["after", "before", "limit", "stream_id", "event_types", "correlation_id"],
    "get_correlation_trace": ["correlation_id"],
    "get_lag_history": ["projection", "minutes"],
    "get_parked_events": ["projection", "status"],
    "get_overview": ["recent"],
    "get_alert_deliveries": ["status", "limit", "hours"],
}


@pytest.fixture(scope="module")
def service(pg_admin_url, template_db):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"cqrs_fuzz_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db[0]}"'))
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False))
        .with_migrations(False)
        .with_rate_limit(1e9, 10**9)
        .build()
    )
    yield svc
    svc.close()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_command_model_only_fails_with_typed_errors(service, data):
    method = data.draw(st.sampled_from(sorted(COMMANDS)))
    fields = {
        name: data.draw(ANY, label=name)
        for name in COMMANDS[method]
        if data.draw(st.booleans(), label=f"give {name}")
    }
    before = service.event_store.count()
    try:
        cmd = getattr(CommandFactory("fuzzer", role="admin"), method)(**fields)
    except ValidationError:
        return
    except TypeError as exc:  # a required keyword left out: a programming error, not input
        assert "missing" in str(exc) and "required" in str(exc)
        return
    try:
        result = service.execute_command(cmd)
    except (ValidationError, NotFoundError):
        assert service.event_store.count() == before
        return
    assert service.event_store.count() == before + len(result.events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_query_model_only_fails_with_typed_errors(service, data):
    method = data.draw(st.sampled_from(sorted(QUERIES)))
    fields = {
        name: data.draw(ANY, label=name)
        for name in QUERIES[method]
        if data.draw(st.booleans(), label=f"give {name}")
    }
    try:
        query = getattr(QueryFactory(), method)(**fields)
        service.execute_query(query, cache=False)
    except (ValidationError, NotFoundError):
        pass
    except TypeError as exc:
        assert "missing" in str(exc) and "required" in str(exc)


def test_logs_of_a_failing_connection_never_carry_the_password(caplog):
    secret_url = "postgresql+psycopg2://admin:hunter2-secret@127.0.0.1:1/nowhere"
    caplog.set_level(logging.DEBUG)
    svc = CQRSServiceBuilder(load_settings()).with_database_url(secret_url).with_migrations(False).build()
    try:
        for attempt in (
            lambda: svc.execute_command(
                CommandFactory("a").create_research_workflow(
                    title="t", research_question="q", methodology="exploratory"
                )
            ),
            lambda: svc.execute_query(QueryFactory().get_workflow_list()),
        ):
            with pytest.raises(CQRSError) as info:
                attempt()
            assert "hunter2" not in info.value.user_message
    finally:
        svc.close()
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert "hunter2" not in logged
