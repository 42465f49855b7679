"""ProjectionRuntime in this process: NOTIFY wake-up, polling fallback, scheduled jobs, pause,
clean stop."""

import time
import uuid

from sqlalchemy import text
from waiting import wait_until
from workflow_histories import History

from cqrs_core.infra.config import load_settings
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine.runtime import ProjectionRuntime
from cqrs_core.write.commands import CommandFactory


def runtime_for(engine, db_url, **settings):
    return ProjectionRuntime(engine, load_settings(database_url=db_url, **settings))


def applied_within(engine, manager, position, seconds):
    """The moment `position` was applied, or None when it was not within `seconds` (some tests
    prove that it is not)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with engine.connect() as c:
            if manager.has_applied(c, position, list(PROJECTION_NAMES)):
                return time.monotonic()
        time.sleep(0.02)
    return None


def runner_is_listening(engine, runtime) -> bool:
    """The runner thread has issued LISTEN and run its first round: from now on it waits for a
    notification (or its poll interval)."""
    with engine.connect() as c:
        listening = c.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN %'"
            )
        ).scalar_one()
    return listening > 0 and runtime.manager.held() == set(PROJECTION_NAMES)


def test_runtime_wakes_on_notify_long_before_the_poll_interval(store, engine, db_url):
    runtime = runtime_for(engine, db_url, projection_poll_seconds=30)
    runtime.start()
    try:
        wait_until(lambda: runner_is_listening(engine, runtime), 10, "the runner to LISTEN and go idle")
        appended_at = time.monotonic()
        [event] = History(store).create()
        done_at = applied_within(engine, runtime.manager, event.position, 5)
        assert done_at is not None and done_at - appended_at < 2
    finally:
        assert runtime.stop(timeout=10)


def test_an_event_held_back_by_an_older_open_transaction_is_applied_when_it_ends_not_at_the_next_poll(
    store, engine, db_url
):
    """The event commits while an older transaction is open: the round its NOTIFY wakes cannot
    reach it (it is above the gap-free horizon), and when that transaction ends no NOTIFY comes.
    The runtime looks again shortly instead of sleeping until the poll interval (30 s here)."""
    runtime = runtime_for(engine, db_url, projection_poll_seconds=30)
    runtime.start()
    try:
        wait_until(lambda: runner_is_listening(engine, runtime), 10, "the runner to LISTEN and go idle")
        with engine.connect() as older:
            older.execute(text("SELECT pg_current_xact_id()"))  # an open transaction with an xid
            [event] = History(store).create()
            assert applied_within(engine, runtime.manager, event.position, 1) is None  # held back
            older.rollback()
            ended_at = time.monotonic()
        done_at = applied_within(engine, runtime.manager, event.position, 5)
        assert done_at is not None and done_at - ended_at < 2
    finally:
        assert runtime.stop(timeout=10)


def test_runtime_polls_when_no_notify_arrives(store, engine, db_url):
    with engine.begin() as c:
        c.execute(text("ALTER TABLE events DISABLE TRIGGER events_notify"))
    runtime = runtime_for(engine, db_url, projection_poll_seconds=0.3)
    runtime.start()
    try:
        wait_until(lambda: runner_is_listening(engine, runtime), 10, "the runner to LISTEN and go idle")
        [event] = History(store).create()
        assert applied_within(engine, runtime.manager, event.position, 5) is not None
    finally:
        assert runtime.stop(timeout=10)


def test_runtime_samples_lag_and_refreshes_views_on_schedule(store, engine, db_url):
    History(store).create()
    runtime = runtime_for(engine, db_url, lag_sample_seconds=0.2, view_refresh_seconds=0.5)
    runtime.start()
    try:
        time.sleep(2.0)  # the schedule is the behaviour: what it did in this window is counted below
    finally:
        assert runtime.stop(timeout=10)
    with engine.connect() as c:
        samples = dict(
            c.execute(text("SELECT projection, count(*) FROM lag_samples GROUP BY projection")).all()
        )
        refreshed = c.execute(text("SELECT count(*) FROM view_refreshes")).scalar()
    assert set(samples) == set(PROJECTION_NAMES) and min(samples.values()) >= 4
    assert refreshed == 4
    assert all(s.lag_events == 0 for s in runtime.manager.status())


def test_pause_takes_effect_while_the_runtime_runs_and_resume_catches_up(store, engine, db_url):
    runtime = runtime_for(engine, db_url, projection_poll_seconds=0.2)
    runtime.start()
    try:
        runtime.manager.pause("task_summary")
        h = History(store)
        h.create()
        h.add_task("a")
        assert applied_within(engine, runtime.manager, store.head(), 1.5) is None
        status = {s.name: s for s in runtime.manager.status()}
        assert status["task_summary"].state == "paused" and status["task_summary"].lag_events == 2
        assert status["workflow_summary"].lag_events == 0
        runtime.manager.resume("task_summary")
        assert applied_within(engine, runtime.manager, store.head(), 5) is not None
    finally:
        assert runtime.stop(timeout=10)


def test_stop_marks_projections_stopped_and_hands_them_to_another_process(store, engine, db_url):
    runtime = runtime_for(engine, db_url)
    runtime.start()
    other = ProjectionManager(engine, load_settings(database_url=db_url))
    try:
        wait_until(
            lambda: runtime.manager.held() == set(PROJECTION_NAMES), 5, "the runtime to hold every projection"
        )
        assert other.run_once() == 0 and other.held() == set()
        assert runtime.stop(timeout=10)
        assert {s.state for s in other.status()} == {"stopped"}
        History(store).create()
        # One event (the create), passed by each projection.
        assert other.catch_up(timeout=5) == len(PROJECTION_NAMES) and other.held() == set(PROJECTION_NAMES)
    finally:
        other.close()


def test_a_command_wakes_the_runtime_without_a_notify_from_its_own_transaction(service, engine, db_url):
    """The command bus's sessions skip the trigger's NOTIFY (migration 0016); its process's
    coalescing notifier sends one after the commit, so the runner still wakes long before its poll,
    also after the server dropped the notifier's connection."""
    with service.command_engine.connect() as c:
        assert c.exec_driver_sql("SHOW cqrs.append_notify").scalar_one() == "coalesced"
    factory = CommandFactory(actor="ana", role="researcher")
    runtime = runtime_for(engine, db_url, projection_poll_seconds=30)
    runtime.start()
    try:
        wait_until(lambda: runner_is_listening(engine, runtime), 10, "the runner to LISTEN and go idle")
        for round_ in ("first", "after the notifier's connection was dropped"):
            sent_at = time.monotonic()
            result = service.execute_command(
                factory.create_research_workflow(
                    workflow_id=uuid.uuid4(),
                    title="Wake",
                    research_question="Does it wake?",
                    methodology="experimental",
                )
            )
            done_at = applied_within(engine, runtime.manager, result.position, 5)
            assert done_at is not None and done_at - sent_at < 2, round_
            with engine.connect() as c:
                dropped = c.exec_driver_sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query = 'NOTIFY cqrs_events'"
                ).scalar_one()
            assert dropped == 1 or round_ != "first"
    finally:
        assert runtime.stop(timeout=10)
