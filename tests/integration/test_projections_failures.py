"""Poison events: retries, isolation, parking, skip and fault policies, retry and discard."""

import uuid

import pytest
from sqlalchemy import text
from workflow_histories import History

from cqrs_core.eventlog.store import EventMetadata, NewEvent
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import TimeoutError_
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine.verify import verify


@pytest.fixture
def manager(engine, db_url):
    m = ProjectionManager(
        engine,
        load_settings(database_url=db_url, projection_retry_attempts=2, projection_retry_backoff=0.001),
    )
    yield m
    m.close()


def status_of(manager, name):
    return {s.name: s for s in manager.status()}[name]


def scalar(engine, sql, **params):
    with engine.connect() as c:
        return c.execute(text(sql), params).scalar()


def poison(store, h: History):
    """A TaskStarted for a task that was never added (hand-appended: the aggregate would refuse)."""
    [event] = store.append(
        h.stream_id,
        h.version,
        [NewEvent("TaskStarted", {"task_id": str(uuid.uuid4()), "attempt": 1})],
        EventMetadata(actor="mallory"),
    )
    h.version += 1
    return event


def test_poison_event_is_parked_and_a_skip_projection_applies_the_rest_of_the_batch(store, manager, engine):
    for name in ("workflow_summary", "task_summary"):
        manager.set_failure_policy(name, "skip")
    h = History(store)
    h.create()
    h.add_task("a")
    bad = poison(store, h)
    h.start()
    h.start_task("a")

    manager.catch_up(timeout=10)
    parked = manager.parked()
    assert {(p.projection, p.position, p.event_type) for p in parked} == {
        ("workflow_summary", bad.position, "TaskStarted"),
        ("task_summary", bad.position, "TaskStarted"),
    }
    assert all(p.attempts == 3 and p.status == "parked" and "unknown task" in p.error for p in parked)
    for s in manager.status():
        assert (s.position, s.lag_events, s.state) == (s.head, 0, "running")
    ws = status_of(manager, "workflow_summary")
    assert ws.parked == 1 and "unknown task" in ws.last_error and ws.last_error_at is not None
    assert ws.events_applied == store.count() - 1
    # the good events around the poison, in the same batch, were applied
    assert scalar(engine, "SELECT status FROM workflow_summary") == "running"
    assert scalar(engine, "SELECT status FROM task_summary") == "running"
    assert verify(engine).ok


def test_poison_event_stops_a_fault_projection_until_discarded(store, manager, engine):
    assert status_of(manager, "workflow_summary").failure_policy == "fault"
    manager.set_failure_policy("task_summary", "skip")
    h = History(store)
    h.create()
    bad = poison(store, h)
    h.start()

    manager.catch_up(timeout=10)
    ws = status_of(manager, "workflow_summary")
    assert ws.state == "faulted" and ws.position == bad.position - 1 and ws.lag_events == 2
    assert f"position {bad.position}" in ws.last_error
    assert status_of(manager, "workflow_activity").lag_events == 0  # the others go on
    manager.catch_up(timeout=10)  # a faulted projection stays where it is
    assert status_of(manager, "workflow_summary").position == bad.position - 1

    [parked] = manager.parked("workflow_summary")
    assert manager.discard_parked([parked.id]) == 1
    manager.catch_up(timeout=10)
    ws = status_of(manager, "workflow_summary")
    assert (ws.state, ws.position, ws.lag_events) == ("running", ws.head, 0)
    assert scalar(engine, "SELECT status FROM workflow_summary") == "running"
    assert [p.status for p in manager.parked("workflow_summary", status=None)] == ["discarded"]
    assert verify(engine).ok


def test_resuming_a_faulted_projection_tries_the_event_again(store, manager, engine):
    h = History(store)
    h.create()
    poison(store, h)
    manager.catch_up(timeout=10)
    assert status_of(manager, "workflow_summary").state == "faulted"
    manager.resume("workflow_summary")
    manager.catch_up(timeout=10)
    assert status_of(manager, "workflow_summary").state == "faulted"
    [parked] = manager.parked("workflow_summary")
    assert parked.attempts == 6  # twice three tries, one parked row


def append_raw(store, h: History, event_type: str, payload: dict):
    """A row the domain could not have written, appended by hand."""
    [event] = store.append(
        h.stream_id, h.version, [NewEvent(event_type, payload)], EventMetadata(actor="mallory")
    )
    h.version += 1
    return event


def test_an_event_whose_payload_does_not_fit_its_type_is_parked_by_every_projection_that_handles_it(
    store, manager, engine
):
    h = History(store)
    h.create()
    bad = append_raw(store, h, "TaskStarted", {"note": "no task id"})
    h.start()

    manager.catch_up(timeout=10)
    parked = {p.projection: p for p in manager.parked()}
    assert set(parked) == set(PROJECTION_NAMES) - {"alert_summary"}  # it reads alert events only
    for p in parked.values():
        assert (p.position, p.event_type) == (bad.position, "TaskStarted")
        assert "does not fit its event type" in p.error and "task_id" in p.error
    ws = status_of(manager, "workflow_summary")  # fault: stops in front of it
    assert (ws.state, ws.position) == ("faulted", bad.position - 1)
    for name in ("task_summary", "workflow_activity"):  # skip: go on past it
        s = status_of(manager, name)
        assert (s.state, s.lag_events) == ("running", 0)
    assert scalar(engine, "SELECT count(*) FROM workflow_activity") == 2  # created and started


def test_an_event_type_no_projection_knows_is_parked_by_the_timeline_and_passed_over_by_the_others(
    store, manager, engine
):
    """The activity timeline has a line for every event, so one it cannot read is parked there with
    the reason (issue 16: an unknown event is a typed error, never silently dropped); the summaries
    do not handle that type and pass over it."""
    h = History(store)
    h.create()
    append_raw(store, h, "WorkflowArchived", {"reason": "moved"})
    h.start()

    manager.catch_up(timeout=10)
    [parked] = manager.parked()
    assert (parked.projection, parked.event_type, parked.position) == (
        "workflow_activity",
        "WorkflowArchived",
        2,
    )
    assert "not an event type this version knows" in parked.error
    for s in manager.status():
        assert (s.state, s.lag_events) == ("running", 0)
    assert scalar(engine, "SELECT status FROM workflow_summary") == "running"
    assert scalar(engine, "SELECT count(*) FROM workflow_activity") == 2
    assert verify(engine).ok


FAILING_TRIGGER = """
CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.{column} = 'boom' THEN RAISE EXCEPTION 'boom is not allowed'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_boom();
"""


def install_trigger(engine, table, column):
    with engine.begin() as c:
        c.exec_driver_sql(FAILING_TRIGGER.format(table=table, column=column))


def drop_trigger(engine, table):
    with engine.begin() as c:
        c.exec_driver_sql(f"DROP TRIGGER refuse_boom ON {table}; DROP FUNCTION refuse_boom()")


def test_parked_event_is_applied_by_retry_once_the_cause_is_fixed(store, manager, engine):
    install_trigger(engine, "task_summary", "name")
    h = History(store)
    h.create()
    h.add_task("fine")
    h.add_task("boom")
    h.add_task("also fine")
    manager.catch_up(timeout=10)
    assert scalar(engine, "SELECT count(*) FROM task_summary") == 2
    [parked] = manager.parked("task_summary")
    assert "boom is not allowed" in parked.error and parked.event_type == "TaskAdded"

    assert manager.retry_parked() == 0  # still failing: stays parked, one more attempt counted
    [again] = manager.parked("task_summary")
    assert again.attempts == parked.attempts + 1

    drop_trigger(engine, "task_summary")
    assert manager.retry_parked([parked.id]) == 1
    assert scalar(engine, "SELECT count(*) FROM task_summary") == 3
    assert manager.parked("task_summary") == []
    assert [p.status for p in manager.parked("task_summary", status="retried")] == ["retried"]
    assert status_of(manager, "task_summary").events_applied == store.count()
    assert verify(engine).ok


def test_fault_projection_moves_on_after_a_successful_retry(store, manager, engine):
    install_trigger(engine, "workflow_summary", "title")
    boom, later = History(store), History(store)
    boom.create(title="boom")
    later.create(title="later")
    manager.catch_up(timeout=10)
    assert status_of(manager, "workflow_summary").state == "faulted"
    assert scalar(engine, "SELECT count(*) FROM workflow_summary") == 0

    drop_trigger(engine, "workflow_summary")
    assert manager.retry_parked() == 1
    manager.catch_up(timeout=10)
    ws = status_of(manager, "workflow_summary")
    assert (ws.state, ws.lag_events, ws.events_applied) == ("running", 0, 2)
    assert scalar(engine, "SELECT count(*) FROM workflow_summary") == 2
    assert verify(engine).ok


def test_database_errors_are_retried_not_parked(store, manager, engine, db_url):
    """A statement timeout is the database's trouble, not the event's: nothing is parked."""
    with engine.begin() as c:  # each insert outlasts the 100 ms statement timeout set below
        c.exec_driver_sql(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$;"
            "CREATE TRIGGER slow BEFORE INSERT ON workflow_activity FOR EACH ROW EXECUTE FUNCTION slow();"
        )
        c.exec_driver_sql(f"ALTER DATABASE \"{engine.url.database}\" SET statement_timeout = '100ms'")
    slow_engine = make_engine(db_url)  # new sessions pick up the database setting
    slow = ProjectionManager(slow_engine, manager.settings)
    try:
        History(store).create()
        with pytest.raises(TimeoutError_):
            slow.run_once("workflow_activity")
        assert slow.parked() == []
    finally:
        slow.close()
        slow_engine.dispose()
    with engine.begin() as c:
        c.exec_driver_sql(f'ALTER DATABASE "{engine.url.database}" RESET statement_timeout')
        c.exec_driver_sql("DROP TRIGGER slow ON workflow_activity")
    manager.catch_up(timeout=10)
    assert scalar(engine, "SELECT count(*) FROM workflow_activity") == 1
