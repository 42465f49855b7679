"""Snapshots that cannot drift (issue 16 part 5), on PostgreSQL: a workflow's stream loads from its
latest snapshot plus the events after it; a snapshot is taken after a command once the stream has
passed the interval; one of other code (schema version, fingerprint), of another stream history or
unreadable is ignored and replaced, never blocking a command; `verify` finds a drifted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from services import build_service
from sqlalchemy import create_engine, text

from cqrs_core import CommandFactory
from cqrs_core.domain.events import stream_id_for
from cqrs_core.domain.schema import REGISTRY, Step
from cqrs_core.domain.workflow import ResearchWorkflow, snapshot_fingerprint
from cqrs_core.infra.errors import DomainRuleViolation
from cqrs_core.write.command_bus import replay
from cqrs_core.write.snapshots import check_snapshots

ALICE = CommandFactory(actor="alice", role="researcher")
EVERY = 5


@pytest.fixture
def service(db_url):
    svc = build_service(db_url, snapshot_every=EVERY)
    yield svc
    svc.close()


def owner_sql(db_url: str, sql: str, **params) -> list:
    """Run `sql` as the database owner (a hand edit, as an operator or a bug would make it)."""
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def snapshot_rows(db_url: str) -> list:
    return owner_sql(
        db_url, "SELECT stream_id, version, schema_version, fingerprint, state FROM aggregate_snapshots"
    )


def full_replay(service, wid: str) -> ResearchWorkflow:
    stream_id = stream_id_for(wid)
    wf = ResearchWorkflow(wid)
    replay(wf, service.event_store.read_stream(stream_id), stream_id)
    return wf


def new_workflow(service) -> tuple[str, list[str]]:
    """A created workflow with two tasks, the second depending on the first: version 3."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    result = service.execute_command(
        ALICE.create_research_workflow(
            title="Sleep and memory",
            research_question="Does sleep help recall?",
            methodology="experimental",
            tags=["sleep"],
            tasks=[
                {"task_id": first, "name": "Search", "kind": "literature_search", "assignee": "bob",
                 "estimate_minutes": 30},
                {"task_id": second, "name": "Analyse", "kind": "analysis", "assignee": "bob",
                 "depends_on": [first]},
            ],
        )
    )  # fmt: skip
    return result.aggregate_id, [first, second]


def toggle(service, wid: str, times: int) -> None:
    """`times` more events: pause, resume, pause... on a running workflow."""
    status = full_replay(service, wid).status
    for _ in range(times):
        if status == "running":
            service.execute_command(ALICE.pause_workflow(workflow_id=wid, reason="a break"))
            status = "paused"
        else:
            service.execute_command(ALICE.resume_workflow(workflow_id=wid))
            status = "running"


def test_a_snapshot_is_taken_after_the_command_that_passes_the_interval(service, db_url):
    wid, _ = new_workflow(service)
    service.execute_command(ALICE.start_workflow(workflow_id=wid))  # version 4
    assert snapshot_rows(db_url) == []
    toggle(service, wid, 1)  # version 5: the interval
    [row] = snapshot_rows(db_url)
    assert (row.stream_id, row.version) == (stream_id_for(wid), 5)
    assert (row.schema_version, row.fingerprint) == (
        ResearchWorkflow.SNAPSHOT_SCHEMA_VERSION,
        snapshot_fingerprint(),
    )
    assert row.state == full_replay(service, wid).to_snapshot() and row.state["status"] == "paused"
    toggle(service, wid, 4)  # version 9: not yet the next
    assert [r.version for r in snapshot_rows(db_url)] == [5]
    toggle(service, wid, 1)
    assert [r.version for r in snapshot_rows(db_url)] == [10]


def test_snapshots_off_takes_none(db_url):
    svc = build_service(db_url, snapshot_every=0)
    try:
        wid, _ = new_workflow(svc)
        svc.execute_command(ALICE.start_workflow(workflow_id=wid))
        toggle(svc, wid, 8)
        svc.command_bus.forget_aggregates()
        toggle(svc, wid, 1)
    finally:
        svc.close()
    assert snapshot_rows(db_url) == []


def test_a_load_from_the_snapshot_and_its_tail_equals_a_full_replay(service, db_url):
    wid, (first, second) = new_workflow(service)
    service.execute_command(ALICE.start_workflow(workflow_id=wid))
    service.execute_command(ALICE.start_task(workflow_id=wid, task_id=first))  # 5: snapshot
    service.execute_command(ALICE.fail_task(workflow_id=wid, task_id=first, error="no access"))
    service.execute_command(ALICE.retry_task(workflow_id=wid, task_id=first))
    service.execute_command(ALICE.complete_task(workflow_id=wid, task_id=first, result_summary="found"))
    third = str(uuid.uuid4())
    service.execute_command(
        ALICE.add_task(workflow_id=wid, task_id=third, name="Write", assignee="carol",
                       estimate_minutes=60, estimate_confidence="low", depends_on=[second])
    )  # fmt: skip
    service.execute_command(ALICE.update_workflow_details(workflow_id=wid, title="Sleep, memory"))  # 10
    service.execute_command(ALICE.start_task(workflow_id=wid, task_id=second))  # 11
    assert [r.version for r in snapshot_rows(db_url)] == [10]

    loaded = service.command_bus.load_aggregate(wid)
    assert loaded == full_replay(service, wid)
    assert loaded.version == 11 and loaded.tasks[first].attempts == 2
    assert list(loaded.tasks) == [first, second, third]

    # The load really starts from the snapshot: a state only the snapshot holds is what a command sees.
    owner_sql(
        db_url,
        "UPDATE aggregate_snapshots SET state = jsonb_set(state, '{title}', '\"Only in the snapshot\"')",
    )
    service.command_bus.forget_aggregates()
    with pytest.raises(DomainRuleViolation, match="Nothing to update"):
        service.execute_command(ALICE.update_workflow_details(workflow_id=wid, title="Only in the snapshot"))


def _snapshotted_workflow(service) -> str:
    wid, _ = new_workflow(service)
    service.execute_command(ALICE.start_workflow(workflow_id=wid))
    toggle(service, wid, 1)  # version 5: snapshot
    return wid


@pytest.mark.parametrize(
    "damage",
    [
        "fingerprint = 'the fold of an older build'",
        "schema_version = schema_version + 1",
        "state = '[]'::jsonb",  # corrupt: not an object
        "state = state - 'tasks'",  # corrupt: a key missing
        "state = jsonb_set(state, '{tasks,0,attempts}', '\"two\"')",  # corrupt: a wrong type
        "event_id = gen_random_uuid()",  # taken from another history of the stream (a reset log)
    ],
)
def test_a_snapshot_of_other_code_or_corrupt_is_ignored_and_replaced(service, db_url, damage):
    wid = _snapshotted_workflow(service)
    owner_sql(db_url, "UPDATE aggregate_snapshots SET state = jsonb_set(state, '{title}', '\"stale\"')")
    owner_sql(db_url, f"UPDATE aggregate_snapshots SET {damage}")
    service.command_bus.forget_aggregates()

    # Not used: the state is the replay's (the title was never 'stale'), and the command is not blocked.
    assert service.command_bus.load_aggregate(wid) == full_replay(service, wid)
    service.execute_command(ALICE.update_workflow_details(workflow_id=wid, title="stale"))  # version 6

    # Replaced by a snapshot of this code, taken after a full replay (the interval counts from 0).
    [row] = snapshot_rows(db_url)
    assert (row.version, row.schema_version, row.fingerprint) == (
        6,
        ResearchWorkflow.SNAPSHOT_SCHEMA_VERSION,
        snapshot_fingerprint(),
    )
    assert row.state == full_replay(service, wid).to_snapshot()
    assert check_snapshots(service.engine).ok


def test_a_schema_change_invalidates_the_snapshots(service, db_url):
    wid = _snapshotted_workflow(service)
    before = snapshot_fingerprint()

    def experiment_noted_v1(payload):  # the upcaster a new event version brings
        return {**payload, "note": ""}

    REGISTRY.add_step(Step("ExperimentNoted", 1, "ExperimentNoted", 2, experiment_noted_v1))
    try:
        after = snapshot_fingerprint()
        assert after != before
        owner_sql(db_url, "UPDATE aggregate_snapshots SET state = jsonb_set(state, '{title}', '\"stale\"')")
        service.command_bus.forget_aggregates()
        service.execute_command(ALICE.update_workflow_details(workflow_id=wid, title="stale"))  # replayed
        [row] = snapshot_rows(db_url)
        assert (row.version, row.fingerprint) == (6, after)
    finally:
        REGISTRY.remove_step("ExperimentNoted", 1)
    assert snapshot_fingerprint() == before
    # Back on the old code, the new snapshot is another fold's: ignored, and verify does not call it drift.
    report = check_snapshots(service.engine)
    assert (report.ok, report.checked, report.ignored) == (True, 0, 1)


CLI = """
import argparse, sys
from cqrs_core.cli.projections import add_parsers
parser = argparse.ArgumentParser(prog="cqrs-console")
add_parsers(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


def test_verify_finds_a_drifted_snapshot(service, db_url):
    wid = _snapshotted_workflow(service)
    other = _snapshotted_workflow(service)
    service.projections.catch_up(timeout=20)
    report = check_snapshots(service.engine)
    assert (report.ok, report.checked) == (True, 2)

    owner_sql(
        db_url,
        "UPDATE aggregate_snapshots SET state = jsonb_set(state, '{tasks,0,status}', '\"completed\"') "
        "WHERE stream_id = :s",
        s=stream_id_for(wid),
    )
    report = check_snapshots(service.engine)
    assert not report.ok and report.checked == 2
    [drift] = report.drifts
    assert (drift.stream_id, drift.version) == (stream_id_for(wid), 5)
    assert drift.problem == "differs from a replay in tasks"
    assert stream_id_for(other) not in "\n".join(report.lines())

    env = {**os.environ, "CQRS_DATABASE_URL": db_url}
    cli = subprocess.run(
        [sys.executable, "-c", CLI, "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 1, cli.stderr
    assert f"snapshot of {stream_id_for(wid)} at version 5: differs from a replay in tasks" in cli.stdout
    assert "workflow snapshots differ" in cli.stdout
    as_json = subprocess.run(
        [sys.executable, "-c", CLI, "verify", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(as_json.stdout)["snapshots"]["drifts"][0]["stream_id"] == stream_id_for(wid)


def test_a_snapshot_left_by_a_demo_reset_is_not_applied_to_the_stream_written_again(service, db_url):
    from cqrs_core.ops.reset import reset

    wid = _snapshotted_workflow(service)  # snapshot at version 5: paused, title "Sleep and memory"
    reset(service.engine)
    service.command_bus.forget_aggregates()
    assert [r.version for r in snapshot_rows(db_url)] == [5]  # the reset does not know snapshots

    # The same workflow id written again, as a re-run seed would: five events, another history.
    service.execute_command(
        ALICE.create_research_workflow(
            workflow_id=wid, title="Second life", research_question="Q", methodology="exploratory"
        )
    )
    service.execute_command(ALICE.start_workflow(workflow_id=wid))
    service.execute_command(ALICE.update_workflow_details(workflow_id=wid, title="Second life, again"))
    service.execute_command(ALICE.update_workflow_details(workflow_id=wid, title="Second life, still"))
    service.command_bus.forget_aggregates()
    loaded = service.command_bus.load_aggregate(wid)
    assert loaded == full_replay(service, wid)
    assert (loaded.version, loaded.title, loaded.status) == (4, "Second life, still", "running")
    service.execute_command(ALICE.pause_workflow(workflow_id=wid))  # version 5
    service.command_bus.forget_aggregates()
    loaded = service.command_bus.load_aggregate(wid)
    assert (loaded.title, loaded.tasks) == ("Second life, still", {})  # not the old snapshot's
    [row] = snapshot_rows(db_url)
    assert row.version == 5 and row.state == loaded.to_snapshot()
