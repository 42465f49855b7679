"""Events that change shape (issue 16, parts 1-3), end to end on PostgreSQL: a log written at the
old TaskAdded v1 keeps working after the upgrade (aggregate, projections, rebuild, verify); an
unknown type and a malformed payload in the middle of a stream are refused and parked with their
reason while other streams go on; a parked old-version event applies once its upcaster exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text

from cqrs_core import CommandFactory
from cqrs_core.domain.events import stream_id_for
from cqrs_core.domain.schema import REGISTRY
from cqrs_core.infra.errors import CorruptStreamError, UnknownEventError
from cqrs_core.ops import schema_check
from cqrs_core.projections.engine.verify import verify

ALICE = CommandFactory(actor="alice", role="researcher")


def insert_rows(db_url: str, workflow_id: str, rows: list[tuple[int, str, int, dict]]) -> None:
    """Rows (version, event_type, schema_version, payload) straight into the log as the database
    owner, as an older build wrote them."""
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            for version, event_type, schema_version, payload in rows:
                conn.execute(
                    text(
                        """INSERT INTO events (stream_id, version, event_type, schema_version, payload, event_id,
                                               correlation_id, actor)
                           VALUES (:s, :v, :t, :sv, CAST(:p AS jsonb), :id, :corr, 'alice')"""
                    ),
                    {
                        "s": stream_id_for(workflow_id),
                        "v": version,
                        "t": event_type,
                        "sv": schema_version,
                        "p": json.dumps(payload),
                        "id": uuid.uuid4(),
                        "corr": uuid.uuid4(),
                    },
                )
    finally:
        engine.dispose()


def v1_workflow(db_url: str, estimate: int | None = 45) -> tuple[str, str]:
    """A workflow as the build before TaskAdded v2 wrote it: created, one task (v1), started."""
    wid, tid = str(uuid.uuid4()), str(uuid.uuid4())
    created = {
        "workflow_id": wid,
        "title": "Sleep and memory",
        "research_question": "Does sleep help recall?",
        "methodology": "experimental",
        "tags": ["sleep"],
        "priority": "normal",
        "owner": "alice",
        "due_date": None,
    }
    task = {
        "task_id": tid,
        "name": "Search",
        "kind": "literature_search",
        "assignee": "bob",
        "estimate_minutes": estimate,
        "depends_on": [],
    }
    insert_rows(
        db_url,
        wid,
        [(1, "WorkflowCreated", 1, created), (2, "TaskAdded", 1, task), (3, "WorkflowStarted", 1, {})],
    )
    return wid, tid


def rows(service, sql: str, **params) -> list:
    with service.engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def task_rows(service) -> list[tuple]:
    return [
        tuple(r)
        for r in rows(
            service,
            "SELECT task_id::text, name, status, estimate_minutes FROM task_summary ORDER BY name, task_id",
        )
    ]


def test_a_log_at_the_old_version_works_after_the_upgrade_end_to_end(service, db_url):
    wid, tid = v1_workflow(db_url)

    # The aggregate reads the v1 task: starting it (a rule that needs the task) works.
    service.execute_command(ALICE.start_task(workflow_id=wid, task_id=tid))
    new_tid = str(uuid.uuid4())
    service.execute_command(
        ALICE.add_task(
            workflow_id=wid,
            task_id=new_tid,
            name="Write up",
            assignee="bob",
            estimate_minutes=90,
            estimate_confidence="low",
        )
    )
    service.execute_command(ALICE.complete_task(workflow_id=wid, task_id=tid, result_summary="done"))

    stored = rows(service, "SELECT version, event_type, schema_version, payload FROM events ORDER BY version")
    assert [(r.event_type, r.schema_version) for r in stored[:3]] == [
        ("WorkflowCreated", 1),
        ("TaskAdded", 1),
        ("WorkflowStarted", 1),
    ]
    assert stored[1].payload["estimate_minutes"] == 45  # never rewritten
    new = next(r for r in stored if r.version == 5)
    assert (new.event_type, new.schema_version) == ("TaskAdded", 2)
    assert new.payload["estimate"] == {"minutes": 90, "confidence": "low"}

    projections = service.projections
    projections.catch_up(timeout=20)
    assert projections.parked() == []
    live = task_rows(service)
    assert live == [(tid, "Search", "completed", 45), (new_tid, "Write up", "pending", 90)]
    assert rows(service, "SELECT task_total, task_completed FROM workflow_summary")[0] == (2, 1)
    for name in ("task_summary", "workflow_summary", "workflow_activity"):
        projections.rebuild(name)
    assert task_rows(service) == live  # rebuild == live
    confidence = "SELECT name, estimate_confidence FROM task_summary ORDER BY name"
    assert [tuple(r) for r in rows(service, confidence)] == [("Search", None), ("Write up", "low")]
    report = verify(service.engine)
    assert report.ok, report.lines()


def test_an_unknown_type_and_a_malformed_payload_mid_stream_are_refused_and_parked_and_nothing_else_is(
    service, db_url
):
    unknown_wid, _ = v1_workflow(db_url)
    insert_rows(db_url, unknown_wid, [(4, "TaskArchived", 1, {"task_id": "x"}), (5, "WorkflowPaused", 1, {})])
    bad_wid, _ = v1_workflow(db_url)
    bad_task = {"task_id": str(uuid.uuid4()), "name": "Bad", "kind": "analysis", "assignee": "bob",
                "estimate": {"minutes": "soon", "confidence": None}, "depends_on": []}  # fmt: skip
    insert_rows(db_url, bad_wid, [(4, "TaskAdded", 2, bad_task), (5, "WorkflowPaused", 1, {})])
    good_wid, good_tid = v1_workflow(db_url)

    with pytest.raises(UnknownEventError) as unknown:
        service.execute_command(ALICE.resume_workflow(workflow_id=unknown_wid))
    assert "'TaskArchived'" in unknown.value.user_message and "version 4" in unknown.value.user_message
    with pytest.raises(CorruptStreamError) as malformed:
        service.execute_command(ALICE.resume_workflow(workflow_id=bad_wid))
    message = malformed.value.user_message
    assert "TaskAdded event at version 4" in message and "estimate.minutes" in message
    assert "Something went wrong" not in message
    service.execute_command(ALICE.start_task(workflow_id=good_wid, task_id=good_tid))  # unaffected

    projections = service.projections
    # workflow_summary's default policy stops it in front of an event it cannot apply ("fault",
    # covered by test_projections_failures); with "skip" every projection goes on past it.
    projections.set_failure_policy("workflow_summary", "skip")
    projections.catch_up(timeout=20)
    parked = {(p.projection, p.event_type): p.error for p in projections.parked()}
    assert set(parked) == {
        ("workflow_activity", "TaskArchived"),
        ("workflow_activity", "TaskAdded"),
        ("task_summary", "TaskAdded"),
        ("workflow_summary", "TaskAdded"),
    }
    assert "not an event type this version knows" in parked[("workflow_activity", "TaskArchived")]
    assert "estimate.minutes" in parked[("task_summary", "TaskAdded")]
    assert all(s.state == "running" and s.lag_events == 0 for s in projections.status())
    statuses = dict(
        (str(r[0]), r[1]) for r in rows(service, "SELECT workflow_id, status FROM workflow_summary")
    )
    # The events after the bad ones were applied; the good workflow's task started.
    assert statuses == {unknown_wid: "paused", bad_wid: "paused", good_wid: "running"}
    assert ("running",) in [
        tuple(r) for r in rows(service, "SELECT status FROM task_summary WHERE name = 'Search'")
    ]


def test_a_parked_old_version_event_applies_when_retried_after_its_upcaster_is_added(service, db_url):
    step = REGISTRY.remove_step("TaskAdded", 1)  # the build before the upcaster existed
    try:
        wid, tid = v1_workflow(db_url, estimate=30)
        with pytest.raises(CorruptStreamError, match="no upcaster takes TaskAdded v1 further"):
            service.execute_command(ALICE.start_task(workflow_id=wid, task_id=tid))
        projections = service.projections
        projections.catch_up(timeout=20)
        parked = projections.parked()
        assert {p.projection for p in parked} == {"task_summary", "workflow_summary", "workflow_activity"}
        assert all("no upcaster from TaskAdded v1" in p.error for p in parked)
        assert task_rows(service) == []
    finally:
        REGISTRY.add_step(step)  # the upgrade adds it

    assert projections.retry_parked() == 3
    assert projections.parked() == []
    assert task_rows(service) == [(tid, "Search", "pending", 30)]
    service.execute_command(ALICE.start_task(workflow_id=wid, task_id=tid))
    projections.catch_up(timeout=20)
    assert task_rows(service) == [(tid, "Search", "running", 30)]


# ---------------------------------------------------------------- part 4: the schema lab's dry run and `schema check`


def log_state(service) -> tuple:
    return (
        tuple(rows(service, "SELECT count(*), max(position), max(recorded_at) FROM events")[0]),
        [tuple(r) for r in rows(service, "SELECT * FROM projection_checkpoints ORDER BY 1")],
        rows(service, "SELECT count(*) FROM parked_events")[0][0],
    )


def test_the_dry_run_reports_versions_upcaster_coverage_and_every_failing_event_and_writes_nothing(
    service, db_url
):
    v1_wid, _ = v1_workflow(db_url)  # positions 1-3
    bad_wid, _ = v1_workflow(db_url)  # positions 4-6
    insert_rows(
        db_url,
        bad_wid,
        [
            (4, "TaskStarted", 1, {"task_id": str(uuid.uuid4()), "attempt": 1}),  # 7: not in its history
            (5, "TaskArchived", 1, {}),  # 8: unknown type (still read after the fold stopped)
        ],
    )
    third, _ = v1_workflow(db_url)  # 9-11
    insert_rows(db_url, third, [(4, "TaskAdded", 3, {})])  # 12: a version newer than the code
    current = service.execute_command(
        ALICE.create_research_workflow(
            title="Current",
            research_question="Q?",
            methodology="exploratory",
            tasks=[{"name": "T", "assignee": "bob"}],
        )
    )
    assert current.aggregate_id
    before = log_state(service)

    report = schema_check.dry_run(service.engine)

    assert log_state(service) == before
    assert report.events == 14 and report.streams == 4
    assert report.versions[("TaskAdded", 1)] == 3 and report.versions[("TaskAdded", 2)] == 1
    assert report.versions[("TaskArchived", 1)] == 1 and report.versions[("TaskAdded", 3)] == 1
    assert report.upcasters == {"TaskAdded v1 -> v2": 3}
    assert [(f.position, f.event_type) for f in report.failures] == [
        (7, "TaskStarted"),
        (8, "TaskArchived"),
        (12, "TaskAdded"),
    ]
    assert "KeyError" in report.failures[0].message  # the aggregate's fold refuses it, named
    assert "unknown event type" in report.failures[1].message
    assert "newer than TaskAdded v2" in report.failures[2].message
    assert not report.ok and report.failed == 3
    text_report = "\n".join(report.lines())
    assert "TaskAdded v1: 3 (upcast to TaskAdded v2)" in text_report
    assert "TaskAdded v1 -> v2: 3 events" in text_report and "position 7: TaskStarted v1" in text_report

    census = {
        (c.event_type, c.schema_version): (c.count, c.reading) for c in schema_check.census(service.engine)
    }
    assert census[("TaskAdded", 1)] == (3, "upcast to TaskAdded v2")
    assert census[("TaskAdded", 2)] == (1, "current")
    assert census[("TaskArchived", 1)] == (1, "unknown type")


def run_schema_check(db_url: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CQRS_DATABASE_URL": db_url}
    return subprocess.run(
        [sys.executable, "-m", "cqrs_core", "schema", "check", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_schema_check_exits_0_when_every_stored_event_reads_and_1_when_one_would_fail(db_url):
    wid, _ = v1_workflow(db_url)
    ok = run_schema_check(db_url)
    assert ok.returncode == 0, ok.stderr
    assert "TaskAdded v1 -> v2: 1 events" in ok.stdout and "schema check: OK" in ok.stdout

    insert_rows(db_url, wid, [(4, "TaskStarted", 1, {"task_id": "not-a-task"})])  # attempt missing
    failed = run_schema_check(db_url)
    assert failed.returncode == 1, failed.stderr
    assert "position 4: TaskStarted v1" in failed.stdout and "attempt: Field required" in failed.stdout
    assert "schema check: FAILED" in failed.stdout
    as_json = run_schema_check(db_url, "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["failures"][0]["position"] == 4
