"""The pure rules behind the command bus hardening (issue 12, items 10, 11, 12, 19, 20): no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pydantic
import pytest

from cqrs_core.domain.events import event_from_payload
from cqrs_core.domain.workflow import ResearchWorkflow
from cqrs_core.infra.errors import CorruptStreamError, UnknownEventError, ValidationError
from cqrs_core.write.command_bus import BUSINESS_TIME_SKEW, check_business_time, fingerprint, replay
from cqrs_core.write.commands import CommandFactory, DiscardParkedEvents, RetryParkedEvents

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STAMP = dict(command_id=uuid.uuid4(), correlation_id=uuid.uuid4(), actor="olga", role="operator")


@pytest.mark.parametrize("ids", [[2**70], [2**63], [0], [-1], [True], [1, 2**64]])
def test_parked_event_ids_outside_the_bigint_range_are_refused_by_the_model(ids):
    for cls in (DiscardParkedEvents, RetryParkedEvents):
        with pytest.raises(pydantic.ValidationError):
            cls(ids=ids, **STAMP)


def test_parked_event_ids_inside_the_bigint_range_are_accepted():
    assert DiscardParkedEvents(ids=[1, 2**63 - 1], **STAMP).ids == [1, 2**63 - 1]
    assert RetryParkedEvents(**STAMP).ids is None


def test_business_time_is_refused_in_the_past_unless_imported_and_never_in_the_future():
    f = CommandFactory(actor="alice")

    def at(when):
        return f.start_workflow(workflow_id=uuid.uuid4(), occurred_at=when)

    check_business_time(at(None), trusted_import=False, now=NOW)
    check_business_time(at(NOW - BUSINESS_TIME_SKEW), trusted_import=False, now=NOW)
    check_business_time(at(NOW + BUSINESS_TIME_SKEW), trusted_import=False, now=NOW)
    check_business_time(at(datetime(1990, 1, 1, tzinfo=UTC)), trusted_import=True, now=NOW)
    with pytest.raises(ValidationError, match="^occurred at: only a trusted import"):
        check_business_time(
            at(NOW - BUSINESS_TIME_SKEW - timedelta(seconds=1)), trusted_import=False, now=NOW
        )
    for trusted in (False, True):
        with pytest.raises(ValidationError, match="^occurred at: a business time cannot lie in the future"):
            check_business_time(at(NOW + timedelta(hours=1)), trusted_import=trusted, now=NOW)


def test_a_fingerprint_covers_type_actor_and_fields_but_not_the_renewable_stamps():
    wid, cid = uuid.uuid4(), uuid.uuid4()
    base = CommandFactory(actor="alice").pause_workflow(workflow_id=wid, reason="holiday", command_id=cid)

    same = [
        base.model_copy(update={"correlation_id": uuid.uuid4()}),
        base.model_copy(update={"command_id": uuid.uuid4()}),
        base.model_copy(update={"occurred_at": NOW}),
        base.model_copy(update={"role": "admin"}),
    ]
    different = [
        base.model_copy(update={"actor": "bob"}),
        base.model_copy(update={"reason": "funding"}),
        base.model_copy(update={"workflow_id": uuid.uuid4()}),
        CommandFactory(actor="alice").resume_workflow(workflow_id=wid, command_id=cid),
    ]
    assert {fingerprint(c) for c in same} == {fingerprint(base)}
    assert fingerprint(base) not in {fingerprint(c) for c in different}


def test_an_unknown_event_type_or_a_payload_without_its_fields_is_a_typed_error():
    with pytest.raises(UnknownEventError, match=r"unknown type 'WorkflowArchived'"):
        event_from_payload("WorkflowArchived", {}, stream_id="workflow-x", version=4)
    with pytest.raises(CorruptStreamError, match="TaskStarted event at version 2 of stream workflow-x"):
        event_from_payload("TaskStarted", {"task_id": "t"}, stream_id="workflow-x", version=2)
    with pytest.raises(CorruptStreamError):
        event_from_payload("WorkflowStarted", ["not", "an", "object"])


def test_a_replay_refuses_a_missing_version():
    row = SimpleNamespace(
        version=1,
        event_type="WorkflowCreated",
        schema_version=1,
        payload=dict(
            workflow_id="w",
            title="T",
            research_question="Q",
            methodology="exploratory",
            tags=[],
            priority="normal",
            owner="alice",
            due_date=None,
        ),
    )
    wf = ResearchWorkflow("w")
    replay(wf, [row], "workflow-w")
    assert wf.version == 1
    with pytest.raises(CorruptStreamError, match="jumps from version 1 to version 3"):
        replay(
            wf,
            [SimpleNamespace(version=3, event_type="WorkflowStarted", schema_version=1, payload={})],
            "workflow-w",
        )
