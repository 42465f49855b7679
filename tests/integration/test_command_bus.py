import threading
import uuid

import psycopg2.extensions
import pytest
from services import build_service
from sqlalchemy import event, text

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.domain.events import stream_id_for
from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import (
    AuthorizationError,
    ConcurrencyError,
    DomainRuleViolation,
    NotFoundError,
    RateLimitedError,
    TimeoutError_,
    ValidationError,
)
from cqrs_core.infra.metrics import MetricsRecorder
from cqrs_core.write.command_bus import CommandBus


def alice(**kw):
    return CommandFactory(actor="alice", role="researcher", **kw)


def create(service, factory=None, **kw):
    factory = factory or alice()
    fields = dict(
        title="AI Research Project",
        research_question="What are the latest AI trends?",
        methodology="systematic_review",
    )
    fields.update(kw)
    return service.execute_command(factory.create_research_workflow(**fields))


def event_count(service) -> int:
    return service.event_store.count()


def test_create_returns_a_result_that_points_at_its_events(service):
    cmd = alice().create_research_workflow(
        title="AI Research Project",
        research_question="What are the latest AI trends?",
        methodology="systematic_review",
        tags=["ai", "trends"],
        priority="high",
        tasks=[{"name": "Search", "kind": "literature_search", "assignee": "bot"}],
    )
    result = service.execute_command(cmd)
    assert result.aggregate_id == str(cmd.workflow_id)
    assert [(e.event_type, e.version) for e in result.events] == [("WorkflowCreated", 1), ("TaskAdded", 2)]
    assert result.position == max(e.position for e in result.events)
    assert result.command_id == cmd.command_id and result.correlation_id == cmd.correlation_id
    assert result.duration_ms > 0 and not result.duplicate


def test_every_event_carries_who_when_which_command_and_correlation(service):
    corr = uuid.uuid4()
    f = alice(correlation_id=corr)
    created = create(service, f)
    start = f.start_workflow(workflow_id=created.aggregate_id)
    service.execute_command(start)
    stream = service.event_store.read_stream(stream_id_for(created.aggregate_id))
    assert [e.actor for e in stream] == ["alice", "alice"]
    assert all(e.correlation_id == corr for e in stream)
    assert stream[1].command_id == start.command_id and stream[1].causation_id == start.command_id
    assert all(e.recorded_at is not None for e in stream)


def test_same_command_submitted_twice_has_one_effect_and_returns_the_first_result(service):
    cmd = alice().create_research_workflow(title="T", research_question="Q", methodology="exploratory")
    first = service.execute_command(cmd)
    again = service.execute_command(cmd)
    assert again.duplicate and again.position == first.position and again.events == first.events
    assert event_count(service) == 1


def test_same_command_from_four_threads_has_one_effect(service):
    created = create(service)
    cmd = alice().start_workflow(workflow_id=created.aggregate_id)
    barrier, results, errors = threading.Barrier(4), [], []

    def submit():
        barrier.wait()
        try:
            results.append(service.execute_command(cmd))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert len({r.position for r in results}) == 1
    assert [e.event_type for e in service.event_store.read_stream(stream_id_for(created.aggregate_id))] == [
        "WorkflowCreated",
        "WorkflowStarted",
    ]


def test_concurrent_commands_on_one_workflow_leave_a_consistent_stream(service):
    f = alice()
    created = create(service, f)
    service.execute_command(f.start_workflow(workflow_id=created.aggregate_id))
    outcomes, barrier = [], threading.Barrier(8)

    def add(i):
        barrier.wait()
        try:
            service.execute_command(
                f.add_task(workflow_id=created.aggregate_id, name=f"task {i}", assignee="bot")
            )
            outcomes.append("ok")
        except ConcurrencyError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    stream = service.event_store.read_stream(stream_id_for(created.aggregate_id))
    assert [e.version for e in stream] == list(range(1, len(stream) + 1))
    assert len(stream) == 2 + outcomes.count("ok")
    assert outcomes.count("ok") >= 1
    names = [e.payload["name"] for e in stream[2:]]
    assert len(set(names)) == len(names) and set(names) <= {f"task {i}" for i in range(8)}


def test_rule_violation_is_specific_and_writes_nothing(service):
    created = create(service)
    before = event_count(service)
    with pytest.raises(DomainRuleViolation, match="it must be running"):
        service.execute_command(alice().pause_workflow(workflow_id=created.aggregate_id))
    assert event_count(service) == before


def test_unknown_workflow_is_not_found(service):
    with pytest.raises(NotFoundError):
        service.execute_command(alice().start_workflow(workflow_id=uuid.uuid4()))


def test_analyst_cannot_start_a_workflow(service):
    created = create(service)
    with pytest.raises(AuthorizationError, match="analyst"):
        service.execute_command(
            CommandFactory("ann", role="analyst").start_workflow(workflow_id=created.aggregate_id)
        )
    with pytest.raises(AuthorizationError):
        service.execute_command(
            CommandFactory("ann", role="analyst").create_research_workflow(
                title="T", research_question="Q", methodology="exploratory"
            )
        )
    assert event_count(service) == 1


def test_researcher_cannot_change_someone_elses_workflow_but_admin_can(service):
    created = create(service)
    with pytest.raises(AuthorizationError, match="owner"):
        service.execute_command(CommandFactory("bob").start_workflow(workflow_id=created.aggregate_id))
    service.execute_command(
        CommandFactory("root", role="admin").start_workflow(workflow_id=created.aggregate_id)
    )


def test_researcher_cannot_run_operator_commands(service):
    with pytest.raises(AuthorizationError, match="operator"):
        service.execute_command(alice().pause_projection(projection="workflow_summary"))


def test_rate_limited_actor_is_refused_while_another_is_not(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_rate_limit(0.5, 2)
        .with_migrations(False)
        .build()
    )
    try:
        for _ in range(2):
            create(svc)
        with pytest.raises(RateLimitedError) as info:
            create(svc)
        assert info.value.retry_after > 0 and "try again in" in info.value.user_message
        create(svc, CommandFactory("bob"))
        assert svc.limiter.refusals["alice"] == 1
    finally:
        svc.close()


def test_command_that_exceeds_its_timeout_leaves_no_events(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_command_timeout(0.2)
        .with_migrations(False)
        .build()
    )
    try:
        with svc.engine.begin() as c:
            c.execute(
                text("""
                CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$;
                CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_insert();
            """)
            )
        with pytest.raises(TimeoutError_):
            create(svc)
        assert svc.event_store.count() == 0
        with svc.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM command_log")).scalar_one() == 0
    finally:
        svc.close()


def test_invalid_fields_are_all_listed(service):
    with pytest.raises(ValidationError) as info:
        alice().create_research_workflow(title="", research_question="x" * 3000, methodology="astrology")
    assert len(info.value.problems) == 3


def test_metrics_count_commands_and_errors(service):
    create(service)
    with pytest.raises(NotFoundError):
        service.execute_command(alice().start_workflow(workflow_id=uuid.uuid4()))
    by_name = {s.name: s for s in service.command_metrics.summaries()}
    assert by_name["CreateResearchWorkflow"].count == 1 and by_name["CreateResearchWorkflow"].p50_ms > 0
    assert by_name["StartWorkflow"].errors == 1
    assert service.command_metrics.errors_by_category() == {"not_found": 1}


def test_full_lifecycle_through_the_bus(service):
    f = alice()
    t1, t2 = uuid.uuid4(), uuid.uuid4()
    created = create(
        service,
        f,
        tasks=[
            {"task_id": t1, "name": "Search", "kind": "literature_search", "assignee": "bot"},
            {"task_id": t2, "name": "Analyse", "kind": "analysis", "assignee": "carol", "depends_on": [t1]},
        ],
    )
    wid = created.aggregate_id
    run = service.execute_command
    run(f.start_workflow(workflow_id=wid))
    with pytest.raises(DomainRuleViolation, match="dependencies"):
        run(f.start_task(workflow_id=wid, task_id=t2))
    run(f.start_task(workflow_id=wid, task_id=t1))
    run(f.fail_task(workflow_id=wid, task_id=t1, error="API down"))
    run(f.retry_task(workflow_id=wid, task_id=t1))
    run(f.complete_task(workflow_id=wid, task_id=t1, result_summary="42 papers"))
    run(f.start_task(workflow_id=wid, task_id=t2))
    run(f.complete_task(workflow_id=wid, task_id=t2, result_summary="done"))
    last = run(f.complete_workflow(workflow_id=wid))
    types = [e.event_type for e in service.event_store.read_stream(stream_id_for(wid))]
    assert types[-1] == "WorkflowCompleted" and last.events[0].version == len(types)


def test_a_command_on_a_connection_the_server_dropped_is_retried_once_and_applied_once(service):
    f = alice()
    created = create(service, f)  # leaves a pooled connection behind
    with service.engine.connect() as c:  # drop every connection of the command pool
        dropped = c.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'cqrs-commands'"
            )
        ).scalar_one()
    assert dropped >= 1
    result = service.execute_command(f.start_workflow(workflow_id=created.aggregate_id))
    assert not result.duplicate
    types = [e.event_type for e in service.event_store.read_stream(stream_id_for(created.aggregate_id))]
    assert types == ["WorkflowCreated", "WorkflowStarted"]


def test_a_workflow_command_returns_its_connection_to_the_pool_with_no_transaction_open(service):
    # The workflow path runs on the pooled driver connection (no SQLAlchemy Connection): each of its
    # statements commits on its own, and the pool takes the connection back with nothing to roll back.
    engine = service.command_bus.engine
    returned: list[tuple[int, bool]] = []
    event.listen(
        engine,
        "reset",
        lambda dbapi, _record, state: returned.append((dbapi.status, state.transaction_was_reset)),
    )
    f = alice()
    wid = create(service, f).aggregate_id
    service.execute_command(f.start_workflow(workflow_id=wid))
    with pytest.raises(DomainRuleViolation):
        service.execute_command(f.start_workflow(workflow_id=wid))  # refused: read again, then refused
    assert returned and all(status == psycopg2.extensions.STATUS_READY for status, _ in returned)
    assert engine.pool.checkedout() == 0


def test_a_bus_on_an_engine_not_in_autocommit_mode_commits_its_workflow_commands(db_url, service):
    engine = make_engine(db_url, pre_ping=False)  # each command in a transaction of its own
    try:
        bus = CommandBus(engine, EventStore(engine), service.settings, MetricsRecorder(), service.limiter)
        f = alice()
        result = bus.execute(
            f.create_research_workflow(title="T", research_question="Q?", methodology="experimental")
        )
        bus.execute(f.start_workflow(workflow_id=result.aggregate_id))
        types = [e.event_type for e in service.event_store.read_stream(stream_id_for(result.aggregate_id))]
        assert types == ["WorkflowCreated", "WorkflowStarted"]
        assert engine.pool.checkedout() == 0
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the bus's cached aggregates


def test_a_repeat_is_recognised_even_when_the_cached_workflow_would_allow_it_again(service):
    f = alice()
    wid = create(service, f).aggregate_id
    service.execute_command(f.start_workflow(workflow_id=wid))
    pause = f.pause_workflow(workflow_id=wid)
    first = service.execute_command(pause)
    service.execute_command(f.resume_workflow(workflow_id=wid))

    again = service.execute_command(pause)  # "pause" is allowed again now: only the command log knows

    assert again.duplicate and again.position == first.position
    assert [e.event_type for e in service.event_store.read_stream(stream_id_for(wid))] == [
        "WorkflowCreated",
        "WorkflowStarted",
        "WorkflowPaused",
        "WorkflowResumed",
    ]


def test_a_workflow_changed_by_another_process_is_read_again_not_refused(db_url, service):
    f = alice()
    wid = create(service, f).aggregate_id
    service.execute_command(f.start_workflow(workflow_id=wid))  # this bus now holds version 2
    other = build_service(db_url)
    try:
        other.execute_command(f.pause_workflow(workflow_id=wid))  # version 3, unknown to the first bus
    finally:
        other.close()

    result = service.execute_command(f.resume_workflow(workflow_id=wid))  # decided on the real state

    assert [e.version for e in result.events] == [4]
    with pytest.raises(DomainRuleViolation, match="it must be paused"):
        service.execute_command(f.resume_workflow(workflow_id=wid))
    stream = service.event_store.read_stream(stream_id_for(wid))
    assert [e.event_type for e in stream] == [
        "WorkflowCreated",
        "WorkflowStarted",
        "WorkflowPaused",
        "WorkflowResumed",
    ]


def test_creating_an_existing_workflow_is_refused_by_its_rule_and_a_repeated_create_is_a_duplicate(service):
    f = alice()
    cmd = f.create_research_workflow(title="T", research_question="Q", methodology="exploratory")
    first = service.execute_command(cmd)
    service.command_bus.forget_aggregates()
    assert service.execute_command(cmd).position == first.position
    twin = cmd.model_copy(update={"command_id": uuid.uuid4()})
    with pytest.raises(DomainRuleViolation, match="already exists"):
        service.execute_command(twin)
    assert event_count(service) == 1


def test_after_the_log_is_emptied_a_cached_workflow_no_longer_exists(service):
    from cqrs_core.ops.reset import reset

    f = alice()
    wid = create(service, f).aggregate_id
    service.execute_command(f.start_workflow(workflow_id=wid))
    reset(service.engine)
    with pytest.raises(NotFoundError):
        service.execute_command(f.pause_workflow(workflow_id=wid))
    assert event_count(service) == 0
