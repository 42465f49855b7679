"""The read models built by the projections, and the manager's basic operations."""

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text
from workflow_histories import T0, History, burn_xids_to_just_below_a_power_of_ten, random_workload

from cqrs_core.domain import events as ev
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import NotFoundError
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine.verify import verify


def make_manager(engine, db_url, **overrides):
    settings = load_settings(database_url=db_url, projection_retry_backoff=0.001, **overrides)
    return ProjectionManager(engine, settings)


@pytest.fixture
def manager(engine, db_url):
    m = make_manager(engine, db_url)
    yield m
    m.close()


def one(engine, sql, **params):
    with engine.connect() as c:
        row = c.execute(text(sql), params).mappings().first()
        return dict(row) if row else None


def rows(engine, sql, **params):
    with engine.connect() as c:
        return [dict(r) for r in c.execute(text(sql), params).mappings()]


def test_completed_workflow_summary_has_status_counts_progress_and_duration(store, manager, engine):
    h = History(store, actor="alice")
    h.create(title="Sleep and memory", tags=("sleep", "memory"), priority="high", due_date="2024-06-30")
    h.add_task("search", kind="search", assignee="bob")
    h.add_task("screen", kind="screening", assignee="carol", depends_on=("search",))
    h.add_task("write", kind="writing", assignee="bob")
    h.start(minutes=60)
    started = h.clock
    h.start_task("search")
    h.complete_task("search", result="42 papers")
    h.start_task("screen")
    h.fail_task("screen", error="API quota", attempt=1)
    h.retry_task("screen", attempt=2)
    h.complete_task("screen")
    h.start_task("write")
    h.fail_task("write", error="writer's block", attempt=1)
    h.complete(reason="good enough", minutes=120)
    finished = h.clock

    assert (
        manager.catch_up(timeout=10) == len(PROJECTION_NAMES) * h.version
    )  # each projection passes each event
    w = one(engine, "SELECT * FROM workflow_summary WHERE workflow_id = :w", w=h.workflow_id)
    assert w["title"] == "Sleep and memory" and w["status"] == "completed"
    assert (w["priority"], w["priority_rank"], w["owner"]) == ("high", 2, "alice")
    assert w["tags"] == ["sleep", "memory"] and str(w["due_date"]) == "2024-06-30"
    assert (w["task_total"], w["task_pending"], w["task_running"], w["task_completed"], w["task_failed"]) == (
        3,
        0,
        0,
        2,
        1,
    )
    assert w["progress_pct"] == pytest.approx(200 / 3)
    assert w["created_at"] == T0 and w["started_at"] == started and w["finished_at"] == finished
    assert w["duration_seconds"] == (finished - started).total_seconds()
    assert w["last_activity_at"] == finished and w["version"] == h.version


def test_task_rows_track_attempts_errors_results_and_durations(store, manager, engine):
    h = History(store)
    h.create()
    h.add_task("search", kind="search", assignee="bob", estimate=45)
    h.add_task("screen", kind="screening", assignee="carol", depends_on=("search",))
    h.start()
    h.start_task("search", minutes=5)
    first_start = h.clock
    h.fail_task("search", error="connection reset", attempt=1, minutes=20)
    h.retry_task("search", attempt=2)
    h.complete_task("search", result="120 records", minutes=30)
    done = h.clock
    h.start_task("screen")
    h.fail_task("screen", error="no access", attempt=1)
    manager.catch_up(timeout=10)

    tasks = {
        r["name"]: r
        for r in rows(engine, "SELECT * FROM task_summary WHERE workflow_id = :w", w=h.workflow_id)
    }
    s = tasks["search"]
    assert (s["status"], s["attempts"], s["kind"], s["assignee"], s["estimate_minutes"]) == (
        "completed",
        2,
        "search",
        "bob",
        45,
    )
    assert s["last_error"] == "connection reset" and s["result_summary"] == "120 records"
    assert s["started_at"] == first_start and s["finished_at"] == done
    assert s["duration_seconds"] == (done - first_start).total_seconds()
    sc = tasks["screen"]
    assert (sc["status"], sc["attempts"], sc["last_error"]) == ("failed", 1, "no access")
    assert sc["depends_on"] == [h.tasks["search"]]


def test_cancelling_a_workflow_cancels_its_open_tasks_and_removal_drops_a_task(store, manager, engine):
    h = History(store)
    h.create()
    for name in ("a", "b", "c", "gone"):
        h.add_task(name)
    h.remove_task("gone")
    h.start()
    h.start_task("a")
    h.complete_task("a")
    h.start_task("b")
    h.cancel(reason="funding cut", open_tasks=("b", "c"))
    manager.catch_up(timeout=10)

    w = one(engine, "SELECT * FROM workflow_summary WHERE workflow_id = :w", w=h.workflow_id)
    assert w["status"] == "cancelled"
    assert (w["task_total"], w["task_completed"], w["task_cancelled"], w["task_running"]) == (3, 1, 2, 0)
    statuses = {
        r["name"]: r["status"]
        for r in rows(engine, "SELECT name, status FROM task_summary WHERE workflow_id = :w", w=h.workflow_id)
    }
    assert statuses == {"a": "completed", "b": "cancelled", "c": "cancelled"}


def test_workflow_statuses_follow_the_lifecycle(store, manager, engine):
    draft, running, paused, failed = (History(store) for _ in range(4))
    for h in (draft, running, paused, failed):
        h.create()
    for h in (running, paused, failed):
        h.start()
    paused.pause("waiting for ethics approval")
    failed.fail("data lost")
    manager.catch_up(timeout=10)
    got = {
        r["workflow_id"]: r
        for r in rows(
            engine,
            "SELECT workflow_id, status, progress_pct, duration_seconds, finished_at FROM workflow_summary",
        )
    }
    assert {str(k): v["status"] for k, v in got.items()} == {
        draft.workflow_id: "draft",
        running.workflow_id: "running",
        paused.workflow_id: "paused",
        failed.workflow_id: "failed",
    }
    assert got[uuid.UUID(draft.workflow_id)]["progress_pct"] == 0
    assert got[uuid.UUID(running.workflow_id)]["duration_seconds"] is None
    assert got[uuid.UUID(failed.workflow_id)]["duration_seconds"] == 600.0


def test_details_update_and_ranked_full_text_search(store, manager, engine):
    a, b = History(store), History(store)
    a.create(
        title="Protein folding with transformers",
        question="Can attention predict structure?",
        tags=("biology",),
    )
    b.create(
        title="Coffee and sleep", question="Does protein intake change sleep quality?", tags=("nutrition",)
    )
    a.update(tags=["biology", "deep-learning"], priority="urgent")
    manager.catch_up(timeout=10)

    ranked = rows(
        engine,
        """SELECT title, ts_rank(search_vector, q) AS rank FROM workflow_summary, websearch_to_tsquery('english', :q) q
           WHERE search_vector @@ q ORDER BY rank DESC""",
        q="protein",
    )
    assert [r["title"] for r in ranked] == ["Protein folding with transformers", "Coffee and sleep"]
    assert rows(
        engine,
        "SELECT title FROM workflow_summary WHERE search_vector @@ websearch_to_tsquery('english', 'learning')",
    )[0]["title"].startswith("Protein")
    w = one(
        engine,
        "SELECT tags, priority, priority_rank, title FROM workflow_summary WHERE workflow_id = :w",
        w=a.workflow_id,
    )
    assert w == {
        "tags": ["biology", "deep-learning"],
        "priority": "urgent",
        "priority_rank": 3,
        "title": "Protein folding with transformers",
    }
    assert rows(engine, "SELECT title FROM workflow_summary WHERE tags @> ARRAY['nutrition']") == [
        {"title": "Coffee and sleep"}
    ]


def test_activity_timeline_has_one_sentence_per_event(store, manager, engine):
    h = History(store, actor="alice")
    h.create(title="Search strategies")
    h.add_task("Search PubMed", kind="search", assignee="bob")
    h.start()
    h.start_task("Search PubMed", actor="bob")
    h.fail_task("Search PubMed", error="rate limited", attempt=1, actor="bob")
    h.retry_task("Search PubMed", attempt=2, actor="bob")
    h.complete_task("Search PubMed", actor="bob")
    h.pause("holiday")
    manager.catch_up(timeout=10)

    timeline = rows(
        engine, "SELECT * FROM workflow_activity WHERE workflow_id = :w ORDER BY position", w=h.workflow_id
    )
    assert [r["summary"] for r in timeline] == [
        "alice created the workflow 'Search strategies'",
        "alice added task 'Search PubMed' (search, assigned to bob)",
        "alice started the workflow",
        "bob started task 'Search PubMed'",
        "bob reported task 'Search PubMed' failed: rate limited",
        "bob retried task 'Search PubMed' (attempt 2)",
        "bob completed task 'Search PubMed'",
        "alice paused the workflow: holiday",
    ]
    assert all(r["correlation_id"] == h.correlation_id for r in timeline)
    assert timeline[3]["task_id"] == uuid.UUID(h.tasks["Search PubMed"]) and timeline[0]["task_id"] is None
    assert timeline[-1]["occurred_at"] == h.clock


def test_a_details_update_names_the_fields_it_changed_in_the_stored_payloads_order(store, manager, engine):
    h = History(store, actor="alice")
    h.create()
    h.update(title="Sleep", research_question="Why sleep?", due_date="2024-06-01", tags=[])
    h.update(priority="high")
    h.update()
    manager.catch_up(timeout=10)

    assert [
        r["summary"]
        for r in rows(
            engine,
            "SELECT summary FROM workflow_activity WHERE event_type = 'WorkflowDetailsUpdated' ORDER BY position",
        )
    ] == [
        "alice updated tags, title, due date, research question",  # jsonb's key order: shorter keys first
        "alice updated priority",
        "alice updated nothing",
    ]


def test_task_names_are_found_across_batches(store, engine, db_url):
    """A task event in a later batch than its TaskAdded still gets the task's name."""
    manager = make_manager(engine, db_url, checkpoint_interval=1)
    try:
        h = History(store)
        h.create()
        h.add_task("Extract data")
        h.start()
        h.start_task("Extract data")
        manager.catch_up(timeout=10)
        last = one(
            engine,
            "SELECT summary FROM workflow_activity WHERE workflow_id = :w ORDER BY position DESC LIMIT 1",
            w=h.workflow_id,
        )
        assert last["summary"] == "alice started task 'Extract data'"
    finally:
        manager.close()


@pytest.mark.parametrize("interval", [1, 7, 50])
def test_read_models_do_not_depend_on_the_batch_size(store, engine, db_url, interval):
    random_workload(store, 25, seed=interval)
    manager = make_manager(engine, db_url, checkpoint_interval=interval)
    try:
        applied = manager.catch_up(timeout=30)
        total = store.count()
        assert applied == len(PROJECTION_NAMES) * total
        report = verify(engine)
        assert report.ok, "\n".join(report.lines())
        assert {s.name: s.events_applied for s in manager.status()} == dict.fromkeys(PROJECTION_NAMES, total)
    finally:
        manager.close()


def test_status_shows_position_head_lag_and_state(store, manager, engine):
    h = History(store)
    h.create()
    h.start()
    before = {s.name: s for s in manager.status()}
    head = h.version
    for s in before.values():
        assert (s.position, s.head, s.lag_events, s.state) == (0, head, 2, "stopped")
        assert s.lag_seconds >= 0 and s.last_error is None
    manager.catch_up(timeout=10)
    after = {s.name: s for s in manager.status()}
    for s in after.values():
        assert (s.position, s.head, s.lag_events, s.lag_seconds) == (head, head, 0, 0.0)
        assert s.state == "running" and s.owner == manager.owner


def test_paused_projection_applies_nothing_until_resumed(store, manager, engine):
    h = History(store)
    h.create()
    manager.catch_up(timeout=10)
    manager.pause("workflow_summary")
    h.start()
    manager.catch_up(timeout=10)  # returns: a paused projection is not waited for
    status = {s.name: s for s in manager.status()}
    assert status["workflow_summary"].state == "paused" and status["workflow_summary"].lag_events == 1
    assert status["workflow_activity"].lag_events == 0
    assert one(engine, "SELECT status FROM workflow_summary")["status"] == "draft"
    manager.resume("workflow_summary")
    manager.catch_up(timeout=10)
    assert one(engine, "SELECT status FROM workflow_summary")["status"] == "running"


def test_has_applied_compares_cursors_for_read_your_writes(store, manager, engine):
    h = History(store)
    [created] = h.create()
    with engine.connect() as c:
        assert manager.has_applied(c, 0, ["workflow_summary"])
        assert not manager.has_applied(c, created.position, ["workflow_summary"])
    manager.run_once("workflow_summary")
    with engine.connect() as c:
        assert manager.has_applied(c, created.position, ["workflow_summary"])
        assert not manager.has_applied(c, created.position, ["workflow_summary", "task_summary"])
        assert not manager.has_applied(c, created.position + 1000, ["workflow_summary"])
        with pytest.raises(NotFoundError, match="no projection named 'nope'"):
            manager.has_applied(c, created.position, ["nope"])


def test_unknown_projection_names_are_a_clear_not_found_error(manager):
    for call in (manager.pause, manager.resume, manager.rebuild, manager.request_rebuild, manager.run_once):
        with pytest.raises(NotFoundError, match="workflow_summary, task_summary, workflow_activity"):
            call("workflow_sumary")


def test_lag_seconds_is_the_age_of_the_oldest_unapplied_event(store, manager, engine):
    h = History(store)
    h.create()
    with engine.begin() as c:  # pretend it was recorded two minutes ago
        c.execute(text("ALTER TABLE events DISABLE TRIGGER events_no_update"))
        c.execute(text("UPDATE events SET recorded_at = recorded_at - interval '2 minutes'"))
        c.execute(text("ALTER TABLE events ENABLE TRIGGER events_no_update"))
    lagging = {s.name: s for s in manager.status()}
    assert all(timedelta(seconds=s.lag_seconds) >= timedelta(minutes=2) for s in lagging.values())


def test_projections_follow_log_order_across_a_transaction_id_digit_boundary(store, manager, engine):
    """Log order is (txid, position) compared as numbers: xid 100000 comes after 99999, not before."""
    boundary = burn_xids_to_just_below_a_power_of_ten(engine)
    if boundary is None:
        pytest.skip("the next power of ten is too far away")
    h = History(store)
    h.create()
    for name in "abcdef":
        h.add_task(name)
    h.start()
    for name in "abcdef":
        h.start_task(name)
    with engine.connect() as c:
        txids = [int(t) for t in c.execute(text("SELECT txid::text FROM events ORDER BY position")).scalars()]
    assert min(txids) < boundary <= max(txids)
    manager.catch_up(timeout=10)
    assert manager.parked() == []
    w = one(engine, "SELECT task_total, task_running FROM workflow_summary")
    assert w == {"task_total": 6, "task_running": 6}
    assert verify(engine).ok


def _task_statuses(engine, h):
    return {
        r["name"]: r["status"]
        for r in rows(engine, "SELECT name, status FROM task_summary WHERE workflow_id = :w", w=h.workflow_id)
    }


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_a_workflow_ended_in_an_old_log_has_no_task_left_pending_or_running(store, manager, engine, end):
    """A log written before TaskCancelled existed: the workflow ended with tasks still pending or
    running. Its end event closes them in every read model, the same in a replay (verify)."""
    h = History(store)
    h.create()
    for name in ("done", "waiting", "busy", "broken"):
        h.add_task(name, assignee="bob")
    h.start()
    h.start_task("done")
    h.complete_task("done")
    h.start_task("busy")
    h.start_task("broken")
    h.fail_task("broken")
    getattr(h, end)()  # an old cancel listed no tasks, or only some: both read the same
    ended_at = h.clock
    manager.catch_up(timeout=10)

    assert _task_statuses(engine, h) == {
        "done": "completed",
        "waiting": "cancelled",
        "busy": "cancelled",
        "broken": "failed",
    }
    busy = one(engine, "SELECT * FROM task_summary WHERE workflow_id = :w AND name = 'busy'", w=h.workflow_id)
    assert busy["finished_at"] == ended_at and busy["duration_seconds"] == 30 * 60
    w = one(engine, "SELECT * FROM workflow_summary WHERE workflow_id = :w", w=h.workflow_id)
    assert (w["task_pending"], w["task_running"], w["task_cancelled"], w["task_failed"]) == (0, 0, 2, 1)
    report = verify(engine)
    assert report.ok, "\n".join(report.lines())


def test_task_cancelled_events_close_tasks_in_every_read_model(store, manager, engine):
    h = History(store, actor="alice")
    h.create()
    h.add_task("search")
    h.add_task("screen")
    h.start()
    h.start_task("search")
    h.emit(
        ev.TaskCancelled(h.tasks["search"], "workflow completed"),
        ev.TaskCancelled(h.tasks["screen"], "workflow completed"),
        ev.WorkflowCompleted("out of time"),
    )
    manager.catch_up(timeout=10)

    assert _task_statuses(engine, h) == {"search": "cancelled", "screen": "cancelled"}
    w = one(engine, "SELECT * FROM workflow_summary WHERE workflow_id = :w", w=h.workflow_id)
    assert (w["status"], w["task_cancelled"], w["task_running"], w["task_pending"]) == ("completed", 2, 0, 0)
    summaries = [
        r["summary"]
        for r in rows(
            engine,
            "SELECT summary FROM workflow_activity WHERE workflow_id = :w ORDER BY position",
            w=h.workflow_id,
        )
    ]
    assert summaries[-3:] == [
        "alice cancelled task 'search': workflow completed",
        "alice cancelled task 'screen': workflow completed",
        "alice completed the workflow: out of time",
    ]
    report = verify(engine)
    assert report.ok, "\n".join(report.lines())


def test_assignee_load_and_active_tasks_leave_out_tasks_of_ended_workflows(store, manager, engine):
    running, completed = History(store), History(store)
    for h in (running, completed):
        h.create()
        h.add_task("work", assignee="erin")
        h.start()
        h.start_task("work")
    completed.complete("stopped early")
    manager.catch_up(timeout=10)
    manager.refresh_views()

    load = one(engine, "SELECT * FROM stats_assignee_load WHERE assignee = 'erin'")
    assert (load["open_tasks"], load["running_tasks"], load["total_tasks"]) == (1, 1, 2)
    active = one(engine, "SELECT sum(task_running) AS n FROM workflow_summary")
    assert active["n"] == 1
