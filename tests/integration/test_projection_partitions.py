"""Partitioned projections (issue 19, part 3): a projection split into K partitions by a hash of
the stream id, each with its own checkpoint and claimed by one runner through an advisory lock.

Every test runs against real PostgreSQL; the runners of two "workers" are two ProjectionManagers
with their own lock sessions (the kill -9 test, test_faults_partitions.py, uses processes)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from waiting import wait_until
from workflow_histories import History, bulk_workload, random_workload

from cqrs_core.eventlog.partitions import partition_of
from cqrs_core.infra.config import load_settings
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine.verify import verify

SPLIT = "workflow_summary"


def make_manager(engine, db_url, owner: str | None = None, **overrides):
    settings = load_settings(database_url=db_url, projection_retry_backoff=0.001, **overrides)
    return ProjectionManager(engine, settings, owner=owner)


def partition_state(engine, name: str) -> list[tuple[int, int, int, int]]:
    """Per partition of `name`: (partition, events_applied, events of its streams at or before its
    cursor, partitions). Equal middle numbers: no event of it applied twice or missed."""
    with engine.connect() as c:
        parts = c.execute(
            text(
                "SELECT partition, partitions, events_applied, last_txid::text AS txid, last_position"
                " FROM projection_partitions WHERE name = :n ORDER BY partition"
            ),
            {"n": name},
        ).all()
        events = c.execute(text("SELECT stream_id, txid::text, position FROM events")).all()
    out = []
    for p in parts:
        cursor = (int(p.txid), p.last_position)
        mine = sum(
            1
            for stream, txid, pos in events
            if partition_of(stream, p.partitions) == p.partition and (int(txid), pos) <= cursor
        )
        out.append((p.partition, int(p.events_applied), mine, p.partitions))
    return out


def assert_each_partition_applied_its_events_once(engine, name: str, partitions: int) -> None:
    state = partition_state(engine, name)
    assert [s[0] for s in state] == list(range(partitions)) and all(s[3] == partitions for s in state)
    wrong = [s for s in state if s[1] != s[2]]
    assert not wrong, f"(partition, applied, its events up to its cursor, K): {wrong}"


def test_one_partition_is_the_default_and_keeps_no_partition_rows(store, engine, db_url):
    manager = make_manager(engine, db_url)
    try:
        random_workload(store, 5)
        manager.catch_up(timeout=20)
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM projection_partitions")).scalar_one() == 0
            assert set(
                c.execute(text("SELECT DISTINCT partitions FROM projection_checkpoints")).scalars()
            ) == {1}
        assert manager.held() == set(PROJECTION_NAMES)
        assert all(s.partitions == () for s in manager.status())
    finally:
        manager.close()


def test_split_projection_applies_every_stream_in_its_own_partition_and_verify_passes(store, engine, db_url):
    random_workload(store, 12)
    bulk_workload(store, 20)
    manager = make_manager(engine, db_url, projection_partitions=4)
    try:
        manager.catch_up(timeout=30)
        for name in PROJECTION_NAMES:
            assert_each_partition_applied_its_events_once(engine, name, 4)
        report = verify(engine)
        assert report.ok, "\n".join(report.lines())
        # Read-your-writes reads the low-water mark: every event is applied by every projection.
        [last] = History(store).create()
        manager.catch_up(timeout=10)
        with engine.connect() as c:
            assert manager.has_applied(c, last.position, list(PROJECTION_NAMES))
        status = {s.name: s for s in manager.status()}
        assert all(s.position == s.head and s.lag_events == 0 for s in status.values())
        ws = status[SPLIT]
        assert [p.partition for p in ws.partitions] == [0, 1, 2, 3]
        assert {p.owner for p in ws.partitions} == {manager.owner}
        assert ws.events_applied == sum(p.events_applied for p in ws.partitions) == store.count()
    finally:
        manager.close()


def test_a_running_projection_is_split_where_it_stands_and_joined_only_where_the_partitions_meet(
    store, engine, db_url
):
    random_workload(store, 6)
    one = make_manager(engine, db_url)
    one.catch_up(timeout=20)
    one.close()
    random_workload(store, 6, seed=9)

    split = make_manager(engine, db_url, projection_partitions=3)
    try:
        split.catch_up(timeout=20)  # every partition starts at the whole projection's checkpoint
        for name in PROJECTION_NAMES:
            # the events applied before the split are counted once, on partition 0
            state = partition_state(engine, name)
            assert [s[3] for s in state] == [3, 3, 3]
            assert sum(s[1] for s in state) == store.count()
    finally:
        split.close()
    assert verify(engine).ok

    # All partitions stand at the end of the log: they can be joined into one again.
    joined = make_manager(engine, db_url, projection_partitions_by_name=f"{SPLIT}=1", projection_partitions=3)
    try:
        joined.run_once()
        with engine.connect() as c:
            assert (
                c.execute(
                    text("SELECT count(*) FROM projection_partitions WHERE name = :n"), {"n": SPLIT}
                ).scalar_one()
                == 0
            )
            row = c.execute(
                text("SELECT partitions, events_applied FROM projection_checkpoints WHERE name = :n"),
                {"n": SPLIT},
            ).one()
        assert (row.partitions, row.events_applied) == (1, store.count())
        random_workload(store, 3, seed=11)
        joined.catch_up(timeout=20)
    finally:
        joined.close()
    assert verify(engine).ok


def test_partitions_at_different_places_keep_their_layout_until_a_rebuild_changes_it(store, engine, db_url):
    random_workload(store, 8)
    four = make_manager(engine, db_url, projection_partitions=4)
    four.catch_up(timeout=20)
    four.close()
    # Move one partition back by hand: the partitions no longer stand at one place.
    with engine.begin() as c:
        c.execute(
            text(
                "UPDATE projection_partitions SET last_txid = '0', last_position = 0, events_applied = 0"
                " WHERE name = :n AND partition = 0"
            ),
            {"n": SPLIT},
        )
        c.execute(text(f"TRUNCATE {SPLIT}"))
    two = make_manager(engine, db_url, projection_partitions=2)
    try:
        two.run_once()
        with engine.connect() as c:
            assert (
                c.execute(
                    text("SELECT partitions FROM projection_checkpoints WHERE name = :n"), {"n": SPLIT}
                ).scalar_one()
                == 4
            )
        result = two.rebuild(SPLIT)
        assert result.finished
        state = partition_state(engine, SPLIT)  # every partition at the swap's cursor
        assert [s[3] for s in state] == [4, 4, 4, 4] and sum(s[1] for s in state) == store.count()
        two.catch_up(timeout=20)  # the runner now splits it as its settings ask
        state = partition_state(engine, SPLIT)  # the swap counts what it applied on partition 0
        assert [s[3] for s in state] == [2, 2] and sum(s[1] for s in state) == store.count()
    finally:
        two.close()
    assert verify(engine).ok


def test_two_runners_share_the_partitions_and_one_takes_over_all_when_the_other_stops(store, engine, db_url):
    bulk_workload(store, 30)
    first = make_manager(engine, db_url, owner="worker-a", projection_partitions=4)
    second = make_manager(engine, db_url, owner="worker-b", projection_partitions=4)
    try:
        first.run_once()
        assert len(first.held()) == 4 * len(PROJECTION_NAMES)  # alone: it takes everything

        def shared() -> bool:
            first.run_once()
            second.run_once()
            a, b = first.held(), second.held()
            return not (a & b) and len(a) == len(b) == 2 * len(PROJECTION_NAMES)

        # The second runner's arrival makes the first give back half within seconds.
        wait_until(shared, 10, "the partitions to be shared out evenly")
        bulk_workload(store, 30)
        wait_until(
            lambda: (
                (first.run_once(), second.run_once())
                and not first.runner._behind(first.runner._committed_tip())
            ),
            20,
            "both runners to catch up",
        )
        holders = {p.owner for s in first.status() if s.name == SPLIT for p in s.partitions}
        assert holders == {"worker-a", "worker-b"}

        second.close()  # a worker stops (or dies: the lock session ends either way)
        started = time.monotonic()
        wait_until(
            lambda: first.run_once() is not None and len(first.held()) == 4 * len(PROJECTION_NAMES),
            10,
            "the remaining runner to take every partition",
        )
        assert time.monotonic() - started < 5
        bulk_workload(store, 10)
        first.catch_up(timeout=20)
        for name in PROJECTION_NAMES:
            assert_each_partition_applied_its_events_once(engine, name, 4)
        assert verify(engine).ok
    finally:
        first.close()
        second.close()


def test_pause_resume_and_a_poison_event_act_on_every_partition(store, engine, db_url):
    manager = make_manager(engine, db_url, projection_partitions=3)
    try:
        random_workload(store, 4)
        manager.catch_up(timeout=20)
        manager.pause(SPLIT)
        random_workload(store, 4, seed=3)
        manager.catch_up(timeout=20)
        paused = {s.name: s for s in manager.status()}[SPLIT]
        assert paused.state == "paused" and paused.lag_events > 0
        assert all(p.lag_events > 0 for p in paused.partitions)
        manager.resume(SPLIT)
        manager.catch_up(timeout=20)
        assert {s.name: s for s in manager.status()}[SPLIT].lag_events == 0

        # A poison event under the fault policy stops the whole projection in front of it ...
        import uuid

        from cqrs_core.eventlog.store import EventMetadata, NewEvent

        h = History(store)
        h.create()
        [bad] = store.append(
            h.stream_id,
            h.version,
            [NewEvent("TaskStarted", {"task_id": str(uuid.uuid4()), "attempt": 1})],
            EventMetadata(actor="mallory"),
        )
        h.version += 1
        h.start()
        random_workload(store, 2, seed=5)
        manager.catch_up(timeout=20)
        ws = {s.name: s for s in manager.status()}[SPLIT]
        assert ws.state == "faulted"
        mine = partition_of(h.stream_id, 3)
        stopped = ws.partitions[mine]
        assert stopped.position == bad.position - 1 or stopped.position < bad.position
        # ... and discarding it lets every partition go on; verify agrees.
        [parked] = manager.parked(SPLIT)
        assert parked.position == bad.position
        assert manager.discard_parked([parked.id]) == 1
        manager.catch_up(timeout=20)
        ws = {s.name: s for s in manager.status()}[SPLIT]
        assert ws.state == "running" and ws.lag_events == 0
        assert verify(engine).ok
    finally:
        manager.close()


def test_a_projection_that_needs_cross_stream_order_is_never_split(db_url):
    from cqrs_core.projections.engine.partitioning import wanted_partitions
    from cqrs_core.projections.workflow_summary import WorkflowSummaryProjection

    class Ordered(WorkflowSummaryProjection):
        cross_stream_order = True

    settings = load_settings(database_url=db_url, projection_partitions=8)
    assert wanted_partitions(settings, WorkflowSummaryProjection()) == 8
    assert wanted_partitions(settings, Ordered()) == 1


@pytest.mark.parametrize("value", ["workflow_summary", "x=0", "x=65", "=2", "a=b"])
def test_a_bad_per_projection_partition_setting_is_refused_with_one_sentence(db_url, value):
    from cqrs_core.infra.config import SettingsError

    with pytest.raises(SettingsError, match="CQRS_PROJECTION_PARTITIONS_BY_NAME: .* is not name=K"):
        load_settings(database_url=db_url, projection_partitions_by_name=value)
