"""Command bus hardening (issue 12, items 10, 11, 12, 19, 20): a broken stream is named, a reused
command id with other content is refused, only trusted imports back-date, a batch larger than
the rate-limit burst is told so, and out-of-range parked event ids are validation errors."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.domain.events import stream_id_for
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import (
    BatchExceedsBurstError,
    CommandIdReusedError,
    CorruptStreamError,
    RateLimitedError,
    UnknownEventError,
    ValidationError,
)
from cqrs_core.tools.workload.runners import seed


def alice() -> CommandFactory:
    return CommandFactory(actor="alice", role="researcher")


def bob() -> CommandFactory:
    return CommandFactory(actor="bob", role="researcher")


def new_workflow(f: CommandFactory, **kw):
    fields = dict(
        title="Sleep and memory", research_question="Does sleep help recall?", methodology="experimental"
    )
    fields.update(kw)
    return f.create_research_workflow(**fields)


def counts(service) -> tuple[int, int]:
    with service.engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM events")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM command_log")).scalar_one(),
        )


def insert_raw_event(db_url: str, workflow_id: str, version: int, event_type: str, payload: dict) -> None:
    """Write a row straight into the log as the database owner, as a hand-made repair, a
    restore from an older build or a newer build's event would."""
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("""INSERT INTO events (stream_id, version, event_type, payload, event_id, actor)
                                 VALUES (:s, :v, :t, CAST(:p AS jsonb), :id, 'restore')"""),
                {
                    "s": stream_id_for(workflow_id),
                    "v": version,
                    "t": event_type,
                    "p": json.dumps(payload),
                    "id": uuid.uuid4(),
                },
            )
    finally:
        engine.dispose()


# ---------------------------------------------------------------- item 10: streams that cannot be replayed


def test_an_unknown_event_type_makes_later_commands_fail_with_an_error_naming_it(service, db_url, caplog):
    f = alice()
    wid = service.execute_command(new_workflow(f)).aggregate_id
    insert_raw_event(db_url, wid, 2, "WorkflowArchived", {"reason": "moved"})

    caplog.set_level(logging.ERROR, logger="cqrs_core.write.command_bus")
    for _ in range(2):  # the cached copy and a fresh read give the same answer
        with pytest.raises(UnknownEventError) as info:
            service.execute_command(f.start_workflow(workflow_id=wid))
        error = info.value
        assert error.category == "corrupt_stream" and isinstance(error, CorruptStreamError)
        assert "'WorkflowArchived'" in error.user_message and f"workflow-{wid}" in error.user_message
        assert "version 2" in error.user_message and "Something went wrong" not in error.user_message
    with pytest.raises(UnknownEventError, match="WorkflowArchived"):
        service.execute_many([f.start_workflow(workflow_id=wid)])

    assert "WorkflowArchived" in caplog.text and f"workflow-{wid}" in caplog.text
    assert service.command_metrics.errors_by_category() == {"corrupt_stream": 3}
    assert counts(service) == (2, 1)


def test_a_stored_event_missing_its_fields_is_a_corrupt_stream(service, db_url):
    f = alice()
    wid = service.execute_command(new_workflow(f)).aggregate_id
    insert_raw_event(db_url, wid, 2, "TaskStarted", {"note": "no task id"})
    service.command_bus.forget_aggregates()

    with pytest.raises(CorruptStreamError, match=r"TaskStarted event at version 2 of stream workflow-"):
        service.execute_command(f.start_workflow(workflow_id=wid))


def test_a_version_gap_is_reported_as_a_gap_not_as_someone_else_changing_the_workflow(service, db_url):
    f = alice()
    wid = service.execute_command(new_workflow(f)).aggregate_id
    insert_raw_event(db_url, wid, 3, "WorkflowStarted", {})  # version 2 is missing

    with pytest.raises(CorruptStreamError) as info:
        service.execute_command(f.pause_workflow(workflow_id=wid))
    assert info.value.category == "corrupt_stream"
    assert f"workflow-{wid} jumps from version 1 to version 3" in info.value.user_message
    assert "Someone else" not in info.value.user_message
    with pytest.raises(CorruptStreamError, match="jumps from version 1 to version 3"):
        service.execute_many([f.pause_workflow(workflow_id=wid)])
    assert counts(service) == (2, 1)


# ---------------------------------------------------------------- item 11: a command id is bound to its command


def test_bob_reusing_alices_command_id_is_refused_and_his_change_is_not_silently_dropped(service):
    alices = new_workflow(alice())
    first = service.execute_command(alices)
    bobs = service.execute_command(new_workflow(bob(), title="Bob's study")).aggregate_id
    update = bob().update_workflow_details(workflow_id=bobs, title="Renamed", command_id=alices.command_id)

    # The first try decides on the bus's cached copy of Bob's workflow, so its append meets Alice's
    # command log row (the concurrent-twin path); the second reads the log and the stream first.
    with pytest.raises(CommandIdReusedError) as info:
        service.execute_command(update)
    assert info.value.status == 409 and info.value.category == "validation"
    assert str(alices.command_id) in info.value.user_message and "new command id" in info.value.user_message
    service.command_bus.forget_aggregates()
    with pytest.raises(CommandIdReusedError):
        service.execute_command(update)

    assert counts(service) == (2, 2)
    again = service.execute_command(alices)  # the exact repeat still gets the first result
    assert again.duplicate and again.position == first.position
    # Bob's own change, with an id of its own, goes through.
    renamed = service.execute_command(update.model_copy(update={"command_id": uuid.uuid4()}))
    assert not renamed.duplicate and [e.event_type for e in renamed.events] == ["WorkflowDetailsUpdated"]


def test_the_same_command_id_with_other_content_is_refused_even_from_the_same_actor(service):
    f = alice()
    cmd = new_workflow(f)
    service.execute_command(cmd)
    with pytest.raises(CommandIdReusedError):
        service.execute_command(cmd.model_copy(update={"title": "Another title"}))
    # Stamps a retry may renew (correlation id, role) do not make it a different command.
    retry = cmd.model_copy(update={"correlation_id": uuid.uuid4()})
    assert service.execute_command(retry).duplicate
    assert counts(service) == (1, 1)


def test_a_batch_refuses_a_command_id_used_before_or_earlier_in_it_for_another_command(service):
    f = alice()
    create = new_workflow(f)
    service.execute_command(create)
    wid = create.workflow_id
    start = f.start_workflow(workflow_id=wid)

    with pytest.raises(CommandIdReusedError, match=r"Command 2 of 2 \(PauseWorkflow\)"):
        service.execute_many([start, f.pause_workflow(workflow_id=wid, command_id=create.command_id)])
    with pytest.raises(CommandIdReusedError, match=r"Command 2 of 2 \(PauseWorkflow\)"):
        service.execute_many([start, f.pause_workflow(workflow_id=wid, command_id=start.command_id)])
    assert counts(service) == (1, 1)

    results = service.execute_many([create, start, start])  # exact repeats still count once
    assert [r.duplicate for r in results] == [True, False, True]
    with service.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT result FROM command_log WHERE command_id = :id"), {"id": start.command_id}
        ).scalar_one()
    assert len(stored["fingerprint"]) == 64  # written by the batch's SQL, as CommandResult.to_json does


def test_an_operator_command_id_cannot_be_reused_for_another_operator_command(service):
    olga = CommandFactory(actor="olga", role="operator")
    pause = olga.pause_projection(projection="task_summary")
    service.execute_command(pause)
    with pytest.raises(CommandIdReusedError):
        service.execute_command(
            olga.resume_projection(projection="task_summary", command_id=pause.command_id)
        )
    assert service.execute_command(pause).duplicate


def make_legacy(db_url: str, command_id: uuid.UUID) -> None:
    """Turn a command's log record into one written before fingerprints were stored (as an
    upgraded database holds them), as the database superuser."""
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            row = conn.execute(
                text("""DELETE FROM command_log WHERE command_id = :id
                                       RETURNING command_type, actor, aggregate_id, correlation_id, result"""),
                {"id": command_id},
            ).one()
            assert "fingerprint" in row.result
            legacy = {k: v for k, v in row.result.items() if k != "fingerprint"}
            conn.execute(
                text("""INSERT INTO command_log (command_id, command_type, actor, aggregate_id, correlation_id,
                                                          result)
                                 VALUES (:id, :t, :a, :g, :c, CAST(:r AS jsonb))"""),
                {
                    "id": command_id,
                    "t": row.command_type,
                    "a": row.actor,
                    "g": row.aggregate_id,
                    "c": row.correlation_id,
                    "r": json.dumps(legacy),
                },
            )
    finally:
        engine.dispose()


def test_a_legacy_command_id_without_fingerprint_is_bound_to_its_actor_and_workflow(service, db_url):
    a, b = alice(), bob()
    alices = service.execute_command(new_workflow(a)).aggregate_id
    alices_other = service.execute_command(new_workflow(a, title="Another study")).aggregate_id
    bobs = service.execute_command(new_workflow(b, title="Bob's study")).aggregate_id
    start = a.start_workflow(workflow_id=alices)
    first = service.execute_command(start)
    make_legacy(db_url, start.command_id)

    hijacks = [
        b.start_workflow(workflow_id=bobs, command_id=start.command_id),  # the review's: Bob's own workflow
        b.start_workflow(workflow_id=alices, command_id=start.command_id),  # Alice's workflow, Bob's command
        a.start_workflow(workflow_id=alices_other, command_id=start.command_id),  # Alice, another workflow
    ]
    for cmd in hijacks:
        for _ in range(2):  # on the bus's cached copy (the append meets the log's key), then a fresh read
            with pytest.raises(CommandIdReusedError, match="new command id"):
                service.execute_command(cmd)
            service.command_bus.forget_aggregates()
        with pytest.raises(CommandIdReusedError, match=r"Command 1 of 1 \(StartWorkflow\)"):
            service.execute_many([cmd])
    assert counts(service) == (4, 4)

    again = service.execute_command(start)  # Alice's own repeat still gets her first result
    assert again.duplicate and again.aggregate_id == alices and again.position == first.position
    assert service.execute_many([start])[0].duplicate
    started = service.execute_command(b.start_workflow(workflow_id=bobs))  # Bob's, with an id of its own
    assert not started.duplicate and started.aggregate_id == bobs


def test_a_legacy_operator_command_id_is_bound_to_its_actor_and_projection(service, db_url):
    olga, oscar = (
        CommandFactory(actor="olga", role="operator"),
        CommandFactory(actor="oscar", role="operator"),
    )
    pause = olga.pause_projection(projection="task_summary")
    service.execute_command(pause)
    make_legacy(db_url, pause.command_id)

    with pytest.raises(CommandIdReusedError):
        service.execute_command(
            oscar.pause_projection(projection="task_summary", command_id=pause.command_id)
        )
    with pytest.raises(CommandIdReusedError):
        service.execute_command(
            olga.pause_projection(projection="workflow_summary", command_id=pause.command_id)
        )
    assert service.execute_command(pause).duplicate


# ---------------------------------------------------------------- item 12: who may set business time


def test_an_interactive_command_cannot_back_date_its_business_time(service):
    f = alice()
    back_dated = new_workflow(f, occurred_at=datetime(1990, 1, 1, tzinfo=UTC))

    with pytest.raises(ValidationError, match=r"^occurred at: only a trusted import") as info:
        service.execute_command(back_dated)
    assert info.value.category == "validation"
    with pytest.raises(ValidationError, match=r"Command 1 of 1 \(CreateResearchWorkflow\): occurred at"):
        service.execute_many([back_dated])
    with pytest.raises(ValidationError, match="occurred at: a business time cannot lie in the future"):
        service.execute_command(
            new_workflow(f, occurred_at=datetime.now(UTC) + timedelta(days=2)), trusted_import=True
        )
    assert counts(service) == (0, 0)

    near = datetime.now(UTC) - timedelta(minutes=1)  # within the clock-skew allowance
    result = service.execute_command(new_workflow(f, occurred_at=near))
    stored = service.event_store.read_stream(stream_id_for(result.aggregate_id))
    assert stored[0].occurred_at == near


def test_a_trusted_import_may_back_date_and_the_demo_seed_does(service):
    f = alice()
    long_ago = datetime(1990, 1, 1, tzinfo=UTC)
    one = service.execute_command(new_workflow(f, occurred_at=long_ago), trusted_import=True)
    many = service.execute_many([new_workflow(f, occurred_at=long_ago)], trusted_import=True)
    for result in (one, many[0]):
        assert service.event_store.read_stream(stream_id_for(result.aggregate_id))[0].occurred_at == long_ago

    end = datetime(2025, 6, 1, tzinfo=UTC)
    report = seed(service, 4, seed=11, end=end, threads=1, batch=2)
    assert report.failed_workflows == 0 and report.workflows == 4
    with service.engine.connect() as conn:
        latest = conn.execute(text("SELECT max(occurred_at) FROM events WHERE actor <> 'alice'")).scalar_one()
    assert latest <= end


def test_a_business_time_without_a_time_zone_is_refused_by_the_command_model():
    with pytest.raises(ValidationError, match="occurred at"):
        new_workflow(alice(), occurred_at=datetime(2025, 1, 1))


# ---------------------------------------------------------------- item 19: batches larger than the burst


def test_a_batch_larger_than_the_burst_is_told_so_and_charges_nothing(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_rate_limit(0.001, 3)
        .with_migrations(False)
        .build()
    )
    try:
        f = alice()
        wid = uuid.uuid4()
        commands = [
            new_workflow(f, workflow_id=wid),
            f.start_workflow(workflow_id=wid),
            f.pause_workflow(workflow_id=wid),
            f.resume_workflow(workflow_id=wid),
        ]
        for _ in range(2):  # the same answer every time: waiting would never help
            with pytest.raises(BatchExceedsBurstError) as info:
                svc.execute_many(commands)
            assert isinstance(info.value, RateLimitedError) and info.value.category == "rate_limited"
            assert info.value.user_message == (
                "A batch of 4 commands from one actor exceeds the rate limit's burst "
                "of 3; split it into batches of at most 3 commands."
            )
            assert "try again" not in info.value.user_message
        # Another actor's share of a refused batch is not charged either.
        with pytest.raises(BatchExceedsBurstError):
            svc.execute_many([new_workflow(bob()), *commands])
        assert len(svc.execute_many(commands[:3])) == 3  # alice's whole burst is still there
        assert svc.execute_command(new_workflow(bob()))
        assert svc.limiter.refusals["alice"] == 0
    finally:
        svc.close()


# ---------------------------------------------------------------- item 20: ids the database cannot hold


def test_a_parked_event_id_beyond_bigint_is_a_validation_error_not_an_infrastructure_one(service):
    olga = CommandFactory(actor="olga", role="operator")
    for build in (
        lambda: olga.discard_parked_events(ids=[2**70]),
        lambda: olga.retry_parked_events(ids=[0, 5]),
    ):
        with pytest.raises(ValidationError, match="ids.0: each id must be a parked event's number"):
            build()
    # What the command-line verbs call directly.
    for call in (
        lambda: service.projections.discard_parked([2**70]),
        lambda: service.projections.retry_parked([-1]),
    ):
        with pytest.raises(ValidationError, match="Parked event ids are whole numbers from 1 to"):
            call()
    assert service.execute_command(olga.discard_parked_events(ids=[2**63 - 1])).aggregate_id == "projections"
    assert "infrastructure" not in service.command_metrics.errors_by_category()
