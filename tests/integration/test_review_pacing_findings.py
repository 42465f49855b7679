"""Attacks on the pacing of the shared window (`SharedLog.pace`, review of 2ff2a38): drains must
never wait for each other in a ring, a stop must end a wait at once, a caught-up reader must not
wait, and a reset of the log (window cleared, cursors back at the origin) must not break `pace`.
Against a real database."""

import threading
import time

import pytest
from workflow_histories import random_workload

from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.eventlog.reader import READER_IDLE_SECONDS, SharedLog
from cqrs_core.infra.config import load_settings
from cqrs_core.ops.reset import reset
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine import batches
from cqrs_core.projections.engine.verify import verify

WINDOW_EVENTS = 400
NO_WAIT = 0.05  # seconds: `pace` returned at once


@pytest.fixture
def small_window(monkeypatch):
    monkeypatch.setattr(batches, "SHARED_WINDOW_MIN_EVENTS", WINDOW_EVENTS)


def test_batches_bigger_than_the_window_do_not_make_the_drains_wait_for_each_other(
    engine, store, db_url, small_window
):
    # CQRS_CHECKPOINT_INTERVAL may exceed the window (it is not bounded by projection_max_batch):
    # then each drain's batch would trim what the others, level with it, read next. Waiting for a
    # reader that is not behind cannot help it: every drain waited READER_IDLE_SECONDS per batch.
    random_workload(store, 150)
    total = store.count()
    settings = load_settings(
        database_url=db_url,
        checkpoint_interval=500,
        projection_max_batch=50,
        projection_retry_attempts=1,
        projection_retry_backoff=0.001,
    )
    manager = ProjectionManager(engine, settings)
    try:
        began = time.monotonic()
        assert manager.catch_up(timeout=120) == len(PROJECTION_NAMES) * total
        elapsed = time.monotonic() - began
        window = manager.shared_log
        assert window.capacity == WINDOW_EVENTS
        assert window.paced_seconds < READER_IDLE_SECONDS, (window.paced_seconds, elapsed)
        assert verify(engine).ok
    finally:
        manager.close()


def _reads(engine, window, reader, after, limit):
    with engine.connect() as conn, conn.begin():
        return window.read(conn, after, limit, reader)


def _cursors(events):
    return [e.cursor for e in events]


def test_readers_level_with_each_other_never_wait_whatever_the_batch(engine, store):
    random_workload(store, 40)
    window = SharedLog(capacity=100)
    a, b = object(), object()
    first = _reads(engine, window, a, LogCursor(), 150)  # more than the window
    assert _cursors(_reads(engine, window, b, LogCursor(), 150)) == _cursors(first)
    began = time.monotonic()
    assert window.pace(a, 150) < NO_WAIT
    assert window.pace(b, 150) < NO_WAIT
    assert time.monotonic() - began < 0.5


def test_a_caught_up_reader_goes_on_at_once_and_the_slowest_never_waits(engine, store):
    random_workload(store, 40)
    total = store.count()
    assert total > 250
    window = SharedLog(capacity=100)
    slow, fast = object(), object()
    cursor = LogCursor()
    for _ in range(3):
        cursor = _reads(engine, window, fast, cursor, 40)[-1].cursor
    _reads(engine, window, slow, window._start, 10)  # at the window's front
    assert window.pace(slow, 40) < NO_WAIT  # the slowest
    # fast's read would trim slow's next events: it waits until slow goes idle (bounded) ...
    waited = window.pace(fast, 80)
    assert 0.5 < waited <= READER_IDLE_SECONDS + 0.5
    # ... and once at the head (its read returns nothing new to trim behind), at once.
    rest = _reads(engine, window, fast, cursor, total)
    # slow (still active) now lies behind the window: nothing fast reads can trim it.
    assert window.pace(fast, 50) < NO_WAIT
    assert rest[-1].position == store.head()


def test_a_stop_ends_a_wait_at_once(engine, store):
    random_workload(store, 40)
    window = SharedLog(capacity=100)
    slow, fast = object(), object()
    cursor = LogCursor()
    for _ in range(3):
        cursor = _reads(engine, window, fast, cursor, 40)[-1].cursor
    _reads(engine, window, slow, window._start, 10)
    stop = threading.Event()
    waited: list[float] = []
    t = threading.Thread(target=lambda: waited.append(window.pace(fast, 80, stop.is_set)))
    t.start()
    time.sleep(0.2)
    stop.set()
    window.wake()
    t.join(timeout=5)
    assert waited and waited[0] < 1.0


def test_a_stale_leave_does_not_remove_a_newer_reader_and_leave_is_idempotent(engine, store):
    random_workload(store, 20)
    window = SharedLog(capacity=100)
    old, new = object(), object()
    _reads(engine, window, old, LogCursor(), 10)
    _reads(engine, window, new, LogCursor(), 10)
    window.leave(old)
    window.leave(old)
    assert set(window._readers) == {new}
    window.leave(new)
    assert window._readers == {}


def test_pace_after_the_log_is_reset_under_registered_readers(engine, store):
    # demo reset empties the log under the window: a read from the origin clears the window,
    # positions start again at 1 (txids do not). The other readers still name their old cursors,
    # whose positions the new window holds again (with other txids).
    random_workload(store, 30)
    window = SharedLog(capacity=1000)  # the demo's log fits in the window: it starts at the origin
    a, b = object(), object()
    old = _reads(engine, window, a, LogCursor(), 1000)
    _reads(engine, window, b, LogCursor(), 40)
    assert window.pace(b, 30) < NO_WAIT
    reset(engine, actor="review")
    random_workload(store, 10)
    fresh = _reads(engine, window, a, LogCursor(), 1000)
    assert fresh[0].position == 1 and fresh[-1].position == store.head() < old[-1].position
    assert fresh[0].txid > old[-1].txid
    began = time.monotonic()
    assert window.pace(b, 30) < NO_WAIT  # its old cursor lies behind the new window
    assert window.pace(a, 30) < NO_WAIT
    assert time.monotonic() - began < 0.5
    assert _cursors(_reads(engine, window, b, LogCursor(), 1000)) == _cursors(fresh)  # exact
