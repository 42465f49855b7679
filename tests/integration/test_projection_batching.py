"""Adaptive batches, the shared log window and poison isolation by halving, against a real database."""

import uuid

from sqlalchemy import event, text
from workflow_histories import History, random_workload

from cqrs_core.eventlog.reader import SharedLog, read_events
from cqrs_core.eventlog.store import EventMetadata, LogCursor, NewEvent
from cqrs_core.infra.config import load_settings
from cqrs_core.ops.reset import reset
from cqrs_core.projections import PROJECTION_NAMES, PROJECTIONS, ProjectionManager, base
from cqrs_core.projections.engine.verify import verify


def make_manager(engine, db_url, **overrides):
    settings = load_settings(
        database_url=db_url, projection_retry_attempts=1, projection_retry_backoff=0.001, **overrides
    )
    return ProjectionManager(engine, settings)


def scalar(engine, sql, **params):
    with engine.connect() as c:
        return c.execute(text(sql), params).scalar()


def checkpoint_commits(engine):
    """Counts the checkpoint updates (one per committed batch) per projection."""
    counts: dict[str, int] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if (
            "UPDATE projection_checkpoints" in statement
            and isinstance(parameters, dict)
            and "n" in parameters
        ):
            counts[parameters["n"]] = counts.get(parameters["n"], 0) + 1

    return counts


def test_batches_double_while_full_and_start_small_again_once_caught_up(engine, store, db_url):
    random_workload(store, 40)  # several hundred events
    total = store.count()
    assert total > 300
    manager = make_manager(engine, db_url, checkpoint_interval=10, projection_max_batch=80)
    try:
        assert manager.catch_up(timeout=60) == len(PROJECTION_NAMES) * total
        for name in PROJECTION_NAMES:
            sizes = manager.batch_sizes[name]
            assert sizes[:4] == [10, 20, 40, 80]
            assert set(sizes[4:]) <= {80}
            assert sum(sizes[:-1]) < total <= sum(sizes)  # the last batch was the one not full
        # Caught up: the next drain starts at the checkpoint interval again.
        h = History(store)
        h.create()
        h.add_task("a")
        manager.run_once()
        assert all(manager.batch_sizes[n] == [10] for n in PROJECTION_NAMES)
        for s in manager.status():
            assert (s.position, s.lag_events, s.events_applied) == (s.head, 0, total + 2)
        assert verify(engine).ok
    finally:
        manager.close()


def test_big_batches_apply_every_event_exactly_once_with_one_checkpoint_per_batch(engine, store, db_url):
    random_workload(store, 60)
    total = store.count()
    counts = checkpoint_commits(engine)
    manager = make_manager(engine, db_url, checkpoint_interval=200, projection_max_batch=5000)
    try:
        assert manager.catch_up(timeout=60) == len(PROJECTION_NAMES) * total
        # 200 + 400 + ... : a few batches, not total / 200 of them
        for name in PROJECTION_NAMES:
            assert counts[name] == len(manager.batch_sizes[name]) <= 4
        for s in manager.status():
            assert (s.position, s.events_applied, s.parked) == (s.head, total, 0)
        assert scalar(engine, "SELECT count(*) FROM workflow_activity") == total
        assert manager.run_once() == 0  # nothing applied twice
        assert verify(engine).ok
    finally:
        manager.close()


def test_a_poison_event_in_a_big_batch_is_isolated_by_halving(engine, store, db_url):
    random_workload(store, 30)
    before = store.count()
    victim = History(store)
    victim.create()
    victim.add_task("a")
    [bad] = store.append(
        victim.stream_id,
        victim.version,
        [NewEvent("TaskStarted", {"task_id": str(uuid.uuid4()), "attempt": 1})],
        EventMetadata(actor="mallory"),
    )
    victim.version += 1
    victim.start()
    random_workload(store, 10, seed=11)
    total = store.count()
    assert total > before + 50

    counts = checkpoint_commits(engine)
    manager = make_manager(engine, db_url, checkpoint_interval=1024, projection_max_batch=1024)
    try:
        manager.set_failure_policy("workflow_summary", "skip")
        manager.catch_up(timeout=60)
        parked = manager.parked()
        assert {(p.projection, p.position) for p in parked} == {
            ("workflow_summary", bad.position),
            ("task_summary", bad.position),
        }
        for s in manager.status():
            assert (s.position, s.lag_events, s.state) == (s.head, 0, "running")
            # Parked by the two that need the workflow and the task, passed by the other two.
            expected = total if s.name in ("workflow_activity", "alert_summary") else total - 1
            assert s.events_applied == expected
        # Halving: O(log n) batches around the poison, not one transaction per event.
        assert counts["workflow_summary"] <= 2 * total.bit_length() + 2
        assert counts["task_summary"] <= 2 * total.bit_length() + 2
        assert counts["workflow_activity"] == counts["alert_summary"] == 1
        assert (
            scalar(engine, "SELECT status FROM workflow_summary WHERE workflow_id = :w", w=victim.workflow_id)
            == "running"
        )
        assert verify(engine).ok
    finally:
        manager.close()


def test_the_shared_window_returns_exactly_what_the_log_holds(engine, store):
    random_workload(store, 20)
    window = SharedLog(capacity=120)
    with engine.connect() as conn:
        everything = read_events(conn, LogCursor(), 100_000)
        assert len(everything) == store.count()

        def key(events):
            return [(e.txid, e.position, e.event_type, e.payload, e.event_id) for e in events]

        # Readers at different cursors and with different limits, as projections would be.
        for start, limit in [
            (0, 50),
            (0, 70),
            (30, 50),
            (50, 200),
            (10, 5),
            (120, 100),
            (0, 10),
            (200, 1000),
        ]:
            after = LogCursor() if start == 0 else everything[start - 1].cursor
            got = window.read(conn, after, limit)
            assert key(got) == key(everything[start : start + limit])
        assert window.hits > 0 and len(window._events) <= 120


def test_the_projections_decode_each_event_of_the_shared_window_once(engine, store, monkeypatch):
    random_workload(store, 10)
    decoded: list[str] = []
    real = base.event_from_payload

    def counting(event_type, payload, **kw):
        decoded.append(event_type)
        return real(event_type, payload, **kw)

    monkeypatch.setattr(base, "event_from_payload", counting)
    window = SharedLog()
    with engine.connect() as conn:  # never committed
        events = window.read(conn, LogCursor(), 100_000)
        assert len(events) == store.count()
        first = None
        for projection in PROJECTIONS.values():
            projection.apply(conn, events, {t.name: t.name for t in projection.tables})
            typed = [e.decoded for e in events]
            first = first or typed
            assert all(a is b for a, b in zip(typed, first, strict=True))
        conn.rollback()
    assert sorted(decoded) == sorted(e.event_type for e in events)  # once each, not once per projection
    assert all(type(e.decoded).__name__ == e.event_type for e in events)


def test_the_shared_window_forgets_a_log_that_was_reset(engine, store, db_url):
    random_workload(store, 5)
    manager = make_manager(engine, db_url)
    try:
        manager.catch_up(timeout=30)
        assert manager.shared_log.misses == store.count()
        reset(engine)
        h = History(store)
        h.create(title="After the reset")
        manager.catch_up(timeout=30)
        assert scalar(engine, "SELECT title FROM workflow_summary") == "After the reset"
        assert scalar(engine, "SELECT count(*) FROM workflow_activity") == 1
        assert verify(engine).ok
    finally:
        manager.close()


def test_the_collector_is_relaxed_only_while_a_drain_catches_up(engine, store, db_url, monkeypatch):
    import gc

    from cqrs_core.projections.engine import runner as runner_module
    from cqrs_core.projections.engine.gc_tuning import catch_up_gc

    monkeypatch.setattr(runner_module, "CATCH_UP_GC_BATCH", 40)
    seen: list[tuple[int, int, int]] = []
    real_step = runner_module.step

    def watching_step(*args, **kwargs):
        seen.append(gc.get_threshold())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(runner_module, "step", watching_step)
    before = gc.get_threshold()
    random_workload(store, 40)
    manager = make_manager(engine, db_url, checkpoint_interval=10, projection_max_batch=80)
    try:
        manager.catch_up(timeout=60)
    finally:
        manager.close()
    assert seen[0] == before  # the first, small batches run with the usual thresholds
    assert catch_up_gc.THRESHOLDS in seen  # the large ones with the relaxed ones
    assert gc.get_threshold() == before  # and the usual thresholds are back afterwards

    # Nested users (three projections, a rebuild) share it: restored only when the last leaves.
    catch_up_gc.enter()
    catch_up_gc.enter()
    catch_up_gc.leave()
    assert gc.get_threshold() == catch_up_gc.THRESHOLDS
    catch_up_gc.leave()
    assert gc.get_threshold() == before
