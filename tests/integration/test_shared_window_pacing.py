"""The projections of a process pace their reads of the shared window (`SharedLog.pace`): a catch-up
reads the log from the database about once, and a slow, stuck or paused projection never stops
the others for long. Against a real database."""

import threading
import time

import pytest
from sqlalchemy import text
from workflow_histories import random_workload

from cqrs_core.infra.config import load_settings
from cqrs_core.projections import PROJECTION_NAMES, PROJECTIONS, ProjectionManager
from cqrs_core.projections.engine import batches
from cqrs_core.projections.engine.verify import verify

# A small window, so a catch-up of a few thousand events crosses it several times over.
WINDOW_EVENTS = 400
MAX_BATCH = 50  # 6 batches (300) fit in the window


@pytest.fixture
def small_window(monkeypatch):
    monkeypatch.setattr(batches, "SHARED_WINDOW_MIN_EVENTS", WINDOW_EVENTS)
    assert batches.window_capacity(MAX_BATCH) == WINDOW_EVENTS


def make_manager(engine, db_url):
    settings = load_settings(
        database_url=db_url,
        checkpoint_interval=25,
        projection_max_batch=MAX_BATCH,
        projection_retry_attempts=1,
        projection_retry_backoff=0.001,
    )
    return ProjectionManager(engine, settings)


def slowed(monkeypatch, name, before_batch):
    """Run `before_batch(n)` (n = 1, 2, ...) before each batch `name` folds, in its transaction."""
    projection = PROJECTIONS[name]
    real = projection.apply
    calls = [0]

    def apply(conn, events, tables):
        calls[0] += 1
        before_batch(calls[0])
        return real(conn, events, tables)

    monkeypatch.setattr(projection, "apply", apply)


def positions(engine):
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT name, last_position FROM projection_checkpoints")).all())


def wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("slow", [None, "workflow_summary"])
def test_a_catch_up_of_every_projection_reads_the_log_from_the_database_about_once(
    engine, store, db_url, small_window, monkeypatch, slow
):
    if slow is not None:
        # One projection folds much more slowly than the others, which without pacing run ahead
        # of it and trim the window before it has read it.
        slowed(monkeypatch, slow, lambda n: time.sleep(0.02))
    random_workload(store, 150)
    total = store.count()
    assert total >= 3 * WINDOW_EVENTS
    manager = make_manager(engine, db_url)
    try:
        assert manager.catch_up(timeout=120) == len(PROJECTION_NAMES) * total
        window = manager.shared_log
        assert window.capacity == WINDOW_EVENTS
        assert window.misses <= 1.1 * total, (window.misses, window.hits, total)
        assert window.hits + window.misses == len(PROJECTION_NAMES) * total  # every read, once
        for s in manager.status():
            assert (s.position, s.events_applied, s.lag_events) == (s.head, total, 0)
        assert manager.run_once() == 0  # nothing applied twice
        assert verify(engine).ok
    finally:
        manager.close()


def test_a_stuck_projection_holds_the_others_back_only_briefly(
    engine, store, db_url, small_window, monkeypatch
):
    release = threading.Event()
    stuck = "task_summary"
    # Wedged in its third batch (inside the transaction, as a hung statement would be).
    slowed(monkeypatch, stuck, lambda n: n == 3 and release.wait(120))
    random_workload(store, 150)
    head = store.head()
    manager = make_manager(engine, db_url)
    others = [n for n in PROJECTION_NAMES if n != stuck]
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(manager.run_once()), daemon=True)
    try:
        began = time.monotonic()
        runner.start()
        # The others wait for the stuck one at most READER_IDLE_SECONDS, then go on to the head.
        assert wait_until(lambda: all(positions(engine)[n] == head for n in others), 60)
        assert time.monotonic() - began < 60
        assert positions(engine)[stuck] < head
        release.set()
        runner.join(timeout=60)
        assert not runner.is_alive()
        assert positions(engine)[stuck] == head
        assert verify(engine).ok
    finally:
        release.set()
        runner.join(timeout=60)
        manager.close()


def test_a_projection_paused_mid_catch_up_does_not_hold_the_others_back(
    engine, store, db_url, small_window, monkeypatch
):
    paused = "workflow_summary"
    slowed(monkeypatch, paused, lambda n: time.sleep(0.05))
    random_workload(store, 150)
    head = store.head()
    manager = make_manager(engine, db_url)
    others = [n for n in PROJECTION_NAMES if n != paused]
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(manager.run_once()), daemon=True)
    try:
        runner.start()
        assert wait_until(lambda: positions(engine)[paused] > 0, 30)
        manager.pause(paused)
        # Its drain stops at its next batch and leaves the window: the round ends without it.
        runner.join(timeout=30)
        assert not runner.is_alive()
        at = positions(engine)
        assert all(at[n] == head for n in others)
        assert 0 < at[paused] < head
        manager.resume(paused)
        manager.catch_up(timeout=60)
        assert positions(engine)[paused] == head
        assert verify(engine).ok
    finally:
        runner.join(timeout=60)
        manager.close()
