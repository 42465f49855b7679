"""Continuous verification: a scheduler job replays a rolling sample of streams and compares them
with the live read-model rows; drift becomes a finding naming the projection, the stream and the
differing columns. The passes run as the runtime role (cqrs_app); hand edits are the owner's."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import text
from waiting import wait_until
from workflow_histories import History, burn_xids_past_a_power_of_ten, random_workload

from cqrs_core.app.demo import inject_poison_event
from cqrs_core.domain.events import stream_id_for
from cqrs_core.eventlog.store import EventMetadata, EventStore, NewEvent
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.projections import ProjectionManager
from cqrs_core.projections.engine.continuous_verify import PASS_LOCK, SampleSize
from cqrs_core.projections.engine.drift_findings import (
    EXTRA_ROW,
    MISSING_ROW,
    findings_of_stream,
    open_drift_findings,
)
from cqrs_core.projections.engine.locks import JOB_NAMESPACE, exclusive
from cqrs_core.projections.engine.runtime import ProjectionRuntime
from cqrs_core.projections.engine.verification_progress import verification_progress


def every(streams: int, max_events: int = 20_000) -> SampleSize:
    return SampleSize(streams=streams, percent=0, max_events=max_events)


@pytest.fixture
def app_engine(db_url):
    """The runtime role's engine: what a worker's passes run as."""
    e = make_engine(db_url, role="cqrs_app")
    yield e
    e.dispose()


@pytest.fixture
def manager(app_engine, db_url):
    m = ProjectionManager(app_engine, load_settings(database_url=db_url, verify_every_seconds=0))
    yield m
    m.close()


@pytest.fixture
def histories(engine, manager):
    made = random_workload(EventStore(engine), 24, seed=11)
    manager.catch_up(timeout=30)
    return made


def owner_sql(engine, sql: str, **params) -> None:
    """A hand edit behind the projections' back (the database owner's)."""
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def tasks_by_workflow(engine) -> dict[str, str]:
    """A task id of each workflow that has a task row."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT DISTINCT ON (workflow_id) workflow_id::text, task_id::text FROM task_summary")
        )
        return dict(rows.all())


def stream_lengths(engine) -> dict[str, int]:
    """Every stream of the log and its number of events, in the database's order of stream ids."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT stream_id, max(version) FROM events GROUP BY stream_id ORDER BY stream_id")
        )
        return dict(rows.all())


def run_round(manager, size: SampleSize):
    """Passes until one completes the round; the reports."""
    reports = []
    while True:
        report = manager.verify_sample(size=size)
        assert report is not None
        reports.append(report)
        if report.round_done:
            return reports
        assert len(reports) < 100, "the round never ended"


def test_a_clean_read_model_has_no_findings(manager, histories):
    reports = run_round(manager, every(10))
    assert [len(r.walked) for r in reports] == [10, 10, 4]
    assert sum(r.checked for r in reports) == 24 and sum(r.skipped for r in reports) == 0
    assert not any(r.drifted for r in reports) and not any(r.problems for r in reports)
    assert open_drift_findings(manager.engine) == []


def test_a_changed_row_is_found_in_the_pass_over_its_stream_with_its_columns(engine, manager, histories):
    with_tasks = tasks_by_workflow(engine)
    later = list(stream_lengths(engine))[10:]  # not in the first passes
    target = next(h for h in histories if h.stream_id in later and h.workflow_id in with_tasks)
    task = with_tasks[target.workflow_id]
    owner_sql(
        engine,
        "UPDATE workflow_summary SET title = '<b>tampered</b>', task_failed = task_failed + 7 WHERE workflow_id = :w",
        w=target.workflow_id,
    )
    owner_sql(
        engine,
        "UPDATE task_summary SET status = 'completed', attempts = 99 WHERE workflow_id = :w AND task_id = :t",
        w=target.workflow_id,
        t=task,
    )
    for report in run_round(manager, every(5)):
        if target.stream_id in report.walked:
            assert report.drifted == {
                "workflow_summary": [target.stream_id],
                "task_summary": [target.stream_id],
            }
            break
        assert not report.drifted  # nothing before the pass over that stream
    findings = {f.projection: f for f in open_drift_findings(manager.engine)}
    assert set(findings) == {"workflow_summary", "task_summary"}
    summary = findings["workflow_summary"]
    assert (summary.stream_id, set(summary.columns)) == (target.stream_id, {"title", "task_failed"})
    title = next(d for d in summary.details if d.column == "title")
    assert title.found == "'<b>tampered</b>'" and title.expected != title.found
    assert title.key == {"workflow_id": target.workflow_id}
    assert set(findings["task_summary"].columns) <= {"status", "attempts"}
    assert "attempts" in findings["task_summary"].columns
    assert "workflow_summary drifted from the log for " + target.stream_id in summary.describe()


def test_a_missing_row_and_rows_of_no_stream_are_findings(engine, manager, histories):
    with_tasks = tasks_by_workflow(engine)
    target = next(h for h in histories if h.workflow_id in with_tasks)
    owner_sql(engine, "DELETE FROM task_summary WHERE workflow_id = :w", w=target.workflow_id)
    ghost = str(uuid.uuid4())
    owner_sql(
        engine,
        """INSERT INTO workflow_activity (position, workflow_id, event_type, actor, occurred_at, summary)
           VALUES (999999, :w, 'WorkflowStarted', 'mallory', now(), 'mallory did something')""",
        w=ghost,
    )
    run_round(manager, every(7))
    found = {(f.projection, f.stream_id): f.columns for f in open_drift_findings(manager.engine)}
    assert found == {
        ("task_summary", target.stream_id): (MISSING_ROW,),
        ("workflow_activity", stream_id_for(ghost)): (EXTRA_ROW,),
    }


def test_a_finding_resolves_when_a_later_pass_finds_the_stream_right_after_a_rebuild(
    engine, manager, histories
):
    target = histories[0]
    owner_sql(
        engine,
        "UPDATE workflow_summary SET status = 'cancelled' WHERE workflow_id = :w",
        w=target.workflow_id,
    )
    run_round(manager, every(50))
    [finding] = open_drift_findings(manager.engine)
    assert (finding.projection, finding.columns) == ("workflow_summary", ("status",))

    manager.verify_sample(size=every(1))  # found again: still one open finding, seen again
    [again] = open_drift_findings(manager.engine)
    assert again.id == finding.id and again.seen_at > finding.seen_at and again.found_at == finding.found_at

    manager.rebuild("workflow_summary")
    report = manager.verify_sample(size=every(1))  # its stream is rechecked whatever the cursor says
    assert report is not None and report.resolved == 1 and target.stream_id not in report.walked
    assert open_drift_findings(manager.engine) == []
    [resolved] = findings_of_stream(manager.engine, target.stream_id)
    assert resolved.resolved_at is not None and resolved.columns == ("status",)


def test_the_rolling_cursor_covers_every_stream_and_survives_a_restart(db_url, engine, manager, histories):
    workflow_streams = list(stream_lengths(engine))
    for other in ("aaa-not-a-workflow", "zzz-not-a-workflow"):  # streams the projections do not fold
        EventStore(engine).append(other, 0, [NewEvent("Noted", {})], EventMetadata(actor="ops"))
    first = [manager.verify_sample(size=every(5)) for _ in range(2)]
    progress = verification_progress(manager.engine)
    assert progress.after_stream == first[-1].walked[-1]
    assert (progress.round_checked, progress.round_total, progress.rounds_completed) == (10, 24, 0)

    # A new process: its own engine and manager, the cursor from the database.
    new_engine = make_engine(db_url, role="cqrs_app")
    restarted = ProjectionManager(new_engine, load_settings(database_url=db_url, verify_every_seconds=0))
    try:
        rest = run_round(restarted, every(5))
        walked = [s for r in [*first, *rest] for s in r.walked]
        assert walked == workflow_streams  # each workflow stream once, in order
        progress = verification_progress(new_engine)
        assert progress.rounds_completed == 1 and progress.last_round_checked == 24
        assert (progress.after_stream, progress.round_checked) == ("", 0)  # the next round starts afresh
        assert progress.round_started_at is not None and progress.round_total == 24
        nxt = restarted.verify_sample(size=every(5))
        assert nxt is not None and nxt.walked == walked[:5]
    finally:
        restarted.close()
        new_engine.dispose()


def test_a_pass_replays_no_more_events_than_the_cap(engine, manager, histories):
    long = History(EventStore(engine))
    long.create()
    for i in range(70):
        long.add_task(f"step {i}")
    manager.catch_up(timeout=10)
    lengths = stream_lengths(engine)
    cap = 60
    reports = run_round(manager, SampleSize(streams=100, percent=0, max_events=cap))
    assert len(reports) > 1
    for r in reports:
        assert r.events <= cap
        assert sum(lengths[s] for s in r.walked if s != long.stream_id) <= cap
    walked = [s for r in reports for s in r.walked]
    assert sorted(walked) == sorted(lengths)  # the long stream is passed over, not stuck on
    assert sum(r.skipped for r in reports) == 1 and lengths[long.stream_id] > cap


def test_the_round_does_not_stall_behind_the_rechecks_of_open_findings(engine, manager):
    store = EventStore(engine)
    first, second = History(store), History(store)
    first.workflow_id, second.workflow_id = (f"00000000-0000-0000-0000-00000000000{i}" for i in (1, 2))
    for h, tasks in ((first, 24), (second, 39)):
        h.create()
        for i in range(tasks):
            h.add_task(f"step {i}")
    manager.catch_up(timeout=10)
    owner_sql(engine, "UPDATE workflow_summary SET title = 'x' WHERE workflow_id = :w", w=first.workflow_id)
    size = SampleSize(streams=1, percent=0, max_events=60)
    report = manager.verify_sample(size=size)
    assert report is not None and report.walked == [first.stream_id] and report.drifted

    # The open finding's 25 events take the recheck half of the cap; the next stream's 40 do not
    # fit beside them, so it goes first and the recheck waits a pass.
    report = manager.verify_sample(size=size)
    assert report is not None and (report.walked, report.rechecked) == ([second.stream_id], 0)
    assert report.events <= 60
    report = manager.verify_sample(size=size)
    assert report is not None and report.rechecked == 1


def test_the_percent_of_the_read_model_sets_the_sample_when_it_is_larger(manager, histories):
    report = manager.verify_sample(size=SampleSize(streams=2, percent=50, max_events=20_000))
    assert report is not None and len(report.walked) == 12


def test_a_stream_written_between_replay_and_compare_is_skipped_not_drift(engine, manager, histories):
    """A projection batch commits exactly between the replay and the comparison: the stream's live
    rows are then ahead of its replay, and the pass must pass it over, not report it."""
    # The pass walks stream ids in order and random_workload returns no draft workflows: start the
    # round just before the first two neighbouring streams the test holds a history of.
    ordered = list(stream_lengths(engine))
    by_stream = {h.stream_id: h for h in histories}
    at = next(i for i in range(len(ordered) - 1) if ordered[i] in by_stream and ordered[i + 1] in by_stream)
    target, tampered = by_stream[ordered[at]], by_stream[ordered[at + 1]]
    owner_sql(engine, "UPDATE verification_progress SET after_stream = :s", s=ordered[at - 1] if at else "")

    def meanwhile():
        # The write takes a transaction id with more digits than the stream's earlier ones: its
        # last event must be found as the latest all the same (as text, '1000' < '999').
        boundary = burn_xids_past_a_power_of_ten(engine)
        [written] = target.update(title="Renamed while the pass ran")
        assert boundary is None or written.txid >= boundary
        manager.catch_up(timeout=10)
        owner_sql(
            engine, "UPDATE workflow_summary SET owner = 'eve' WHERE workflow_id = :w", w=tampered.workflow_id
        )

    report = manager.verify_sample(size=every(3), after_replay=meanwhile)
    assert report is not None and report.walked[:2] == [target.stream_id, tampered.stream_id]
    assert report.skipped == 1 and report.checked == 2
    # The comparison reads the live rows as of its own snapshot: the edit made meanwhile is found.
    assert report.drifted == {"workflow_summary": [tampered.stream_id]}
    [finding] = open_drift_findings(manager.engine)
    assert finding.columns == ("owner",)


def test_events_the_live_projection_parked_are_skipped_by_the_replay_too(engine, manager, histories):
    poison = inject_poison_event(EventStore(engine), actor="ops", role="operator")
    manager.catch_up(timeout=30)
    parked = {p.projection: p.id for p in manager.parked() if p.position == poison.position}
    # task_summary parked it and went on; workflow_summary (policy "fault") stopped in front of it.
    assert {"task_summary", "workflow_summary"} <= set(parked)

    report = manager.verify_sample(size=every(50))
    assert report is not None and poison.stream_id in report.walked
    assert (report.drifted, report.problems) == ({}, [])
    # Compared where it was applied (the replay skips the parked event too), passed over where not.
    assert report.passed_over == {"workflow_summary": [poison.stream_id]}

    # Its parked event settled between the replay and the comparison: task_summary passes it over.
    def meanwhile():
        manager.discard_parked([parked["task_summary"]])

    report = manager.verify_sample(size=every(50), after_replay=meanwhile)
    assert report is not None and report.drifted == {}
    assert report.passed_over == {"workflow_summary": [poison.stream_id], "task_summary": [poison.stream_id]}

    manager.discard_parked([parked["workflow_summary"]])
    manager.catch_up(timeout=10)
    report = manager.verify_sample(size=every(50))
    assert report is not None and (report.drifted, report.passed_over, report.skipped) == ({}, {}, 0)


def test_no_false_drift_while_projections_apply_a_steady_load(engine, db_url, app_engine, histories):
    """The runtime applies a load from two writers while passes run back to back: every stream is
    either compared (and right) or skipped, never reported."""
    settings = load_settings(database_url=db_url, verify_every_seconds=0, checkpoint_interval=5)
    runtime = ProjectionRuntime(app_engine, settings)
    store = EventStore(engine)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        try:
            mine = [h for i, h in enumerate(histories) if i % 2 == seed]
            n = 0
            while not stop.is_set():
                h = mine[n % len(mine)]
                h.update(title=f"Title {n} of writer {seed}")
                if n % 5 == 0:
                    fresh = History(store)
                    fresh.create()
                    fresh.add_task("new")
                    mine.append(fresh)
                n += 1
                stop.wait(0.005)  # a steady load, not a busy loop on a shared machine
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    runtime.start()
    writers = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for w in writers:
        w.start()
    reports = []
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            report = runtime.manager.verify_sample(size=every(6))
            assert report is not None
            reports.append(report)
    finally:
        stop.set()
        for w in writers:
            w.join(10)
        runtime.stop()
    assert not errors
    assert not [r.drifted for r in reports if r.drifted]
    assert open_drift_findings(app_engine) == []
    assert sum(r.checked for r in reports) > 0
    assert sum(r.skipped for r in reports) > 0  # the load did reach the streams being verified


def test_one_pass_at_a_time_and_one_per_interval_across_processes(engine, manager, histories):
    with exclusive(engine, JOB_NAMESPACE, PASS_LOCK) as mine:  # another process's pass is running
        assert mine and manager.verify_sample(size=every(5)) is None
    assert verification_progress(engine).last_pass_at is None
    assert manager.verify_sample(size=every(5), min_interval=60) is not None
    assert manager.verify_sample(size=every(5), min_interval=60) is None  # one finished just now
    assert manager.verify_sample(size=every(5)) is not None


def test_the_runtime_runs_passes_on_its_own_schedule(db_url, app_engine, histories):
    settings = load_settings(database_url=db_url, verify_every_seconds=0.5, verify_sample_streams=5)
    runtime = ProjectionRuntime(app_engine, settings)
    runtime.start()
    try:
        wait_until(
            lambda: verification_progress(app_engine).rounds_completed >= 1,
            30,
            "the scheduled passes to complete a round",
        )
        assert "verification" in [j.job_id for j in runtime.jobs()]
    finally:
        runtime.stop()
    progress = verification_progress(app_engine)
    assert progress.last_pass_error is None and progress.last_round_checked == 24


def test_the_runtime_role_holds_only_what_the_passes_need(engine):
    with engine.connect() as conn:
        grants = conn.execute(
            text(
                """
                SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type)
                FROM information_schema.role_table_grants
                WHERE grantee = 'cqrs_app' AND table_name LIKE 'verification_%'
                GROUP BY table_name
                """
            )
        ).all()
    assert dict(grants) == {
        "verification_findings": "INSERT,SELECT,UPDATE",
        "verification_progress": "SELECT,UPDATE",
    }
