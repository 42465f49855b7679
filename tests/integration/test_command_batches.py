"""`execute_many`: workflow commands in order as one all-or-nothing transaction, with the same
idempotency, rules and access checks as one command at a time."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.domain.events import stream_id_for
from cqrs_core.eventlog.store import EventMetadata, NewEvent, StreamAppend
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import (
    AuthorizationError,
    ConcurrencyError,
    DomainRuleViolation,
    NotFoundError,
    RateLimitedError,
    ValidationError,
)


def alice() -> CommandFactory:
    return CommandFactory(actor="alice", role="researcher")


def lifecycle(f: CommandFactory, title: str = "Sleep and memory") -> list:
    wid = uuid.uuid4()
    first, second = uuid.uuid4(), uuid.uuid4()
    return [
        f.create_research_workflow(
            workflow_id=wid,
            title=title,
            research_question="Does sleep help recall?",
            methodology="experimental",
            tasks=[{"task_id": first, "name": "Recruit", "assignee": "bot"}],
        ),
        f.add_task(workflow_id=wid, task_id=second, name="Analyse", assignee="bot", depends_on=[first]),
        f.start_workflow(workflow_id=wid),
        f.start_task(workflow_id=wid, task_id=first),
        f.complete_task(workflow_id=wid, task_id=first, result_summary="40 people recruited"),
    ]


def counts(service) -> tuple[int, int]:
    with service.engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM events")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM command_log")).scalar_one(),
        )


def test_a_batch_applies_commands_in_order_across_workflows(service):
    f = alice()
    batch = lifecycle(f, "Sleep and memory") + lifecycle(f, "Noise and focus")

    results = service.execute_many(batch)

    assert [r.command_id for r in results] == [c.command_id for c in batch]
    assert not any(r.duplicate for r in results)
    assert [e.event_type for e in results[0].events] == ["WorkflowCreated", "TaskAdded"]
    positions = [e.position for r in results for e in r.events]
    assert positions == sorted(positions), "positions follow the order of the batch"
    for wid in {str(c.workflow_id) for c in batch}:
        stream = service.event_store.read_stream(stream_id_for(wid))
        assert [e.version for e in stream] == list(range(1, 7))
        assert [e.event_type for e in stream] == [
            "WorkflowCreated",
            "TaskAdded",
            "TaskAdded",
            "WorkflowStarted",
            "TaskStarted",
            "TaskCompleted",
        ]
        assert len({e.txid for e in stream}) == 1  # one transaction
    assert counts(service) == (12, 10)

    # Each command's log row is what a repeat of it gets back, one at a time or in a batch.
    again = service.execute_command(batch[3])
    assert again.duplicate and again.position == results[3].position and again.events == results[3].events
    replayed = service.execute_many(batch)
    assert all(r.duplicate for r in replayed)
    assert [r.position for r in replayed] == [r.position for r in results]
    assert counts(service) == (12, 10)

    service.projections.catch_up(timeout=60)
    page = service.execute_query(QueryFactory().get_workflow_list(page_size=10), cache=False)
    assert sorted((i["title"], i["status"], i["task_completed"], i["task_total"]) for i in page.items) == [
        ("Noise and focus", "running", 1, 2),
        ("Sleep and memory", "running", 1, 2),
    ]


def test_a_batch_continues_a_workflow_written_before_it_and_skips_what_already_ran(service):
    f = alice()
    commands = lifecycle(f)
    service.execute_command(commands[0])
    service.execute_command(commands[1])

    results = service.execute_many(commands)

    assert [r.duplicate for r in results] == [True, True, False, False, False]
    stream = service.event_store.read_stream(stream_id_for(str(commands[0].workflow_id)))
    assert [e.version for e in stream] == list(range(1, 7))
    assert counts(service) == (6, 5)


def test_the_same_command_twice_in_one_batch_runs_once(service):
    f = alice()
    create, add = lifecycle(f)[:2]
    results = service.execute_many([create, add, add])
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].position == results[1].position
    assert counts(service) == (3, 2)


def test_a_refused_command_names_itself_and_nothing_of_the_batch_is_written(service):
    f = alice()
    good = lifecycle(f)
    wid = good[0].workflow_id
    pause, pause_again = f.pause_workflow(workflow_id=wid), f.pause_workflow(workflow_id=wid)
    with pytest.raises(DomainRuleViolation, match=r"Command 7 of 7 \(PauseWorkflow\): Cannot pause"):
        service.execute_many([*good, pause, pause_again])  # the first pause is fine; the second is not
    assert counts(service) == (0, 0)

    with pytest.raises(NotFoundError, match="Command 1 of 1"):
        service.execute_many([f.start_workflow(workflow_id=uuid.uuid4())])
    bob = CommandFactory(actor="bob", role="researcher")
    service.execute_many(good)
    with pytest.raises(AuthorizationError, match="Only the owner"):
        service.execute_many([bob.pause_workflow(workflow_id=wid)])
    assert counts(service) == (6, 5)


def test_a_batch_refuses_what_a_single_command_would_not_allow(service):
    analyst = CommandFactory(actor="ann", role="analyst")
    with pytest.raises(AuthorizationError):
        service.execute_many(lifecycle(analyst))
    operator = CommandFactory(actor="olga", role="operator")
    with pytest.raises(ValidationError, match="workflow commands only"):
        service.execute_many([*lifecycle(alice())[:1], operator.refresh_statistics()])
    with pytest.raises(ValidationError, match="not a workflow command"):
        service.execute_many(["CreateResearchWorkflow"])
    assert service.execute_many([]) == []
    assert counts(service) == (0, 0)


def test_a_batch_takes_one_rate_limit_token_per_command(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_rate_limit(0.001, 6)
        .with_migrations(False)
        .build()
    )
    try:
        f = alice()
        with pytest.raises(RateLimitedError):
            svc.execute_many(lifecycle(f) + lifecycle(f))  # 10 commands, burst 6: never allowed at once
        svc.execute_many(lifecycle(f))  # 5 of 6 tokens
        with pytest.raises(RateLimitedError):
            svc.execute_many(lifecycle(f)[:2])
        assert counts(svc) == (6, 5)
    finally:
        svc.close()


def test_append_batch_checks_each_streams_version_and_writes_all_or_nothing(service):
    store = service.event_store
    meta = EventMetadata(actor="alice")
    store.append("s-1", 0, [NewEvent("WorkflowStarted", {})], meta)
    with pytest.raises(ConcurrencyError):  # s-1 is at 1, not 0
        store.append_batch(
            [
                StreamAppend("s-2", 0, [NewEvent("WorkflowStarted", {})], meta),
                StreamAppend("s-1", 0, [NewEvent("WorkflowStarted", {})], meta),
            ]
        )
    with pytest.raises(ConcurrencyError):  # a version too high would leave a gap
        store.append_batch([StreamAppend("s-1", 5, [NewEvent("WorkflowStarted", {})], meta)])
    with pytest.raises(ValidationError, match="does not follow on"):
        store.append_batch(
            [
                StreamAppend("s-2", 0, [NewEvent("WorkflowStarted", {})], meta),
                StreamAppend("s-2", 3, [NewEvent("WorkflowStarted", {})], meta),
            ]
        )
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        store.append_batch([StreamAppend("s-2", 0, [NewEvent("WorkflowStarted", {"x": object()})], meta)])
    assert store.count() == 1

    stored = store.append_batch(
        [
            StreamAppend("s-2", 0, [NewEvent("WorkflowStarted", {"n": 1})], meta),
            StreamAppend("s-1", 1, [NewEvent("WorkflowPaused", {"reason": "x"})], meta),
            StreamAppend("s-2", 1, [NewEvent("WorkflowPaused", {}), NewEvent("WorkflowResumed", {})], meta),
        ]
    )
    assert [[(e.stream_id, e.version) for e in part] for part in stored] == [
        [("s-2", 1)],
        [("s-1", 2)],
        [("s-2", 2), ("s-2", 3)],
    ]
    assert [e.payload for e in store.read_stream("s-2")] == [{"n": 1}, {}, {}]
    assert stored[2][1].position > stored[2][0].position > stored[1][0].position > stored[0][0].position
