"""`verify`: a fresh replay of the log compared row by row with the live read models."""

import pytest
from alert_histories import AlertHistory
from sqlalchemy import text
from workflow_histories import History, random_workload

from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.config import load_settings
from cqrs_core.projections import ProjectionManager
from cqrs_core.projections.engine.verify import verify


@pytest.fixture
def caught_up(engine, db_url):
    store = EventStore(engine)
    histories = random_workload(store, 30, seed=3)
    AlertHistory(store).raised().acknowledged().snoozed().resolved()
    AlertHistory(store).raised(rule="parked_events", subject="workflow_activity")
    manager = ProjectionManager(engine, load_settings(database_url=db_url))
    manager.catch_up(timeout=30)
    yield manager, histories
    manager.close()


def test_verify_passes_on_live_read_models(engine, caught_up):
    report = verify(engine)
    assert report.ok, "\n".join(report.lines())
    assert {t.table for t in report.tables} == {
        "workflow_summary",
        "task_summary",
        "workflow_activity",
        "alert_summary",
    }
    assert all(t.live_rows == t.replay_rows > 0 for t in report.tables)
    assert {t.table: t.live_rows for t in report.tables}["alert_summary"] == 2


def test_verify_finds_a_tampered_row_a_missing_row_and_an_extra_row(engine, caught_up):
    _, histories = caught_up
    wid = histories[0].workflow_id
    with engine.begin() as c:
        c.execute(
            text(
                "UPDATE workflow_summary SET title = 'tampered', task_failed = task_failed + 1 WHERE workflow_id = :w"
            ),
            {"w": wid},
        )
        c.execute(text("DELETE FROM task_summary WHERE ctid = (SELECT min(ctid) FROM task_summary)"))
        c.execute(text("UPDATE alert_summary SET state = 'resolved' WHERE state = 'raised'"))
        c.execute(
            text(
                """INSERT INTO workflow_activity (position, workflow_id, event_type, actor, occurred_at, summary)
               VALUES (999999, :w, 'WorkflowStarted', 'mallory', now(), 'mallory did something')"""
            ),
            {"w": wid},
        )
    report = verify(engine)
    assert not report.ok
    tables = {t.table: t for t in report.tables}
    ws = tables["workflow_summary"]
    assert (ws.changed, ws.missing, ws.extra) == (1, 0, 0)
    [diff] = ws.differences
    assert diff.kind == "changed" and set(diff.columns) == {"title", "task_failed"}
    assert diff.live["title"] == "tampered" and diff.replay["title"] != "tampered"
    assert (tables["task_summary"].missing, tables["task_summary"].extra) == (1, 0)
    [alert_diff] = tables["alert_summary"].differences
    assert alert_diff.kind == "changed" and alert_diff.columns == ("state",)
    assert (tables["workflow_activity"].extra, tables["workflow_activity"].differences[0].key) == (
        1,
        {"position": 999999},
    )
    lines = "\n".join(report.lines())
    assert "title: live 'tampered' != replay" in lines and "missing from the live table" in lines


def test_verify_compares_at_the_live_checkpoint_while_the_projection_lags(engine, caught_up):
    manager, _ = caught_up
    manager.pause("task_summary")
    random_workload(EventStore(engine), 5, seed=99)
    manager.catch_up(timeout=10)
    report = verify(engine)
    assert report.ok, "\n".join(report.lines())
    positions = {t.table: t.position for t in report.tables}
    assert positions["task_summary"] < positions["workflow_summary"]


def test_verify_agrees_on_ended_workflows_old_and_new(engine, caught_up):
    """The workload ends workflows both ways: with a TaskCancelled per unfinished task (as the
    domain does now) and without (a log written before). Replay and live read the same, and no
    ended workflow keeps a task pending or running."""
    manager, _ = caught_up
    store = EventStore(engine)
    for end in ("complete", "fail", "cancel"):
        for new_style in (True, False):
            h = History(store)
            h.create()
            h.add_task("waiting")
            h.add_task("busy")
            h.start()
            h.start_task("busy")
            if new_style:
                reason = {"complete": "workflow completed", "fail": "workflow failed"}.get(
                    end, "workflow cancelled"
                )
                h.cancel_task("waiting", reason)
                h.cancel_task("busy", reason)
            getattr(h, end)()
    manager.catch_up(timeout=10)
    with engine.connect() as c:
        cancelled_events = c.execute(
            text("SELECT count(*) FROM events WHERE event_type = 'TaskCancelled'")
        ).scalar()
        left_open = c.execute(
            text(
                """SELECT count(*) FROM task_summary t JOIN workflow_summary w USING (workflow_id)
                   WHERE w.status IN ('completed', 'failed', 'cancelled') AND t.status IN ('pending', 'running')"""
            )
        ).scalar()
        closed_by_end = c.execute(
            text(
                """SELECT count(*) FROM task_summary t
                   WHERE t.status = 'cancelled' AND NOT EXISTS (
                       SELECT 1 FROM events e WHERE e.event_type = 'TaskCancelled'
                         AND e.payload ->> 'task_id' = t.task_id::text)"""
            )
        ).scalar()
    assert cancelled_events > 0 and closed_by_end > 0 and left_open == 0
    report = verify(engine)
    assert report.ok, "\n".join(report.lines())
