"""Rebuilds: shadow tables, an atomic swap, reads served throughout, kill and resume."""

import os
import signal
import subprocess
import sys
import threading

import pytest
from alert_histories import AlertHistory
from sqlalchemy import text
from waiting import wait_until
from workflow_histories import History, random_workload

from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import ConcurrencyError
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine.locks import REBUILD_NAMESPACE, exclusive
from cqrs_core.projections.engine.rebuild import RebuildFailed
from cqrs_core.projections.engine.runtime import ProjectionRuntime
from cqrs_core.projections.engine.verify import verify

TABLES = {
    "workflow_summary": "workflow_id",
    "task_summary": "workflow_id, task_id",
    "workflow_activity": "position",
    "alert_summary": "alert_id",
}


def make_manager(engine, db_url, **kw):
    return ProjectionManager(
        engine, load_settings(database_url=db_url, lag_sample_seconds=0.2, view_refresh_seconds=0.5), **kw
    )


@pytest.fixture
def manager(engine, db_url):
    m = make_manager(engine, db_url, rebuild_batch_size=40)
    yield m
    m.close()


def snapshot(engine, table):
    with engine.connect() as c:
        return c.execute(
            text(f"SELECT *, search_vector::text AS sv FROM {table} ORDER BY {TABLES[table]}")
            if table == "workflow_summary"
            else text(f"SELECT * FROM {table} ORDER BY {TABLES[table]}")
        ).all()


def count(engine, table):
    with engine.connect() as c:
        return c.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def status_of(manager, name):
    return {s.name: s for s in manager.status()}[name]


class Reader(threading.Thread):
    """Queries the read models without pause and remembers every row count it saw."""

    def __init__(self, db_url):
        super().__init__(daemon=True)
        self.engine = make_engine(db_url)
        self.stop = threading.Event()
        self.seen: dict[str, list[int]] = {t: [] for t in TABLES}
        self.errors: list[BaseException] = []

    def run(self):
        try:
            while not self.stop.is_set():
                with self.engine.connect() as c:
                    for table in TABLES:
                        self.seen[table].append(c.execute(text(f"SELECT count(*) FROM {table}")).scalar())
                    c.execute(text("SELECT * FROM stats_task_kind")).all()  # views keep working
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            self.engine.dispose()

    def finish(self):
        self.stop.set()
        self.join(10)
        assert not self.errors, self.errors


@pytest.mark.parametrize("name", PROJECTION_NAMES)
def test_rebuild_produces_identical_tables_and_reads_are_served_throughout(
    store, manager, engine, db_url, name
):
    random_workload(store, 40, seed=5)
    for i in range(4):
        AlertHistory(store).raised(subject=f"s{i}").acknowledged().resolved()
    manager.catch_up(timeout=30)
    manager.refresh_views()
    before = {t: snapshot(engine, t) for t in TABLES}
    with engine.begin() as c:  # drift the live table so the swap has something to fix
        c.execute(text(f"DELETE FROM {name} WHERE ctid IN (SELECT ctid FROM {name} LIMIT 3)"))
    rows_now = {t: count(engine, t) for t in TABLES}

    progress, states = [], []

    def on_progress(done, total):
        progress.append((done, total))
        states.append(status_of(manager, name))

    reader = Reader(db_url)
    reader.start()
    wait_until(lambda: all(reader.seen.values()) or reader.errors, 10, "the reader's first counts")
    result = manager.rebuild(name, progress=on_progress)
    reader.finish()

    assert result.finished and not result.resumed and result.events == store.count()
    assert result.rows_changed == {name: 3}
    assert {t: snapshot(engine, t) for t in TABLES} == before
    # every read saw either the table as it was before the swap, or as it is after it
    for table, counts in reader.seen.items():
        allowed = {rows_now[table], len(before[table])}
        assert counts and set(counts) <= allowed, table
    assert progress[-1] == (store.count(), store.count()) and len(progress) > 3
    assert all(s.state == "rebuilding" and s.rebuild_total == store.count() for s in states[1:])
    assert any(s.rebuild_eta_seconds is not None for s in states)
    after = status_of(manager, name)
    assert after.state != "rebuilding" and after.events_applied == store.count() and after.lag_events == 0
    with engine.connect() as c:
        assert c.execute(text("SELECT to_regclass(:t)"), {"t": f"cqrs_shadow.{name}"}).scalar() is None
    assert verify(engine).ok


def test_rebuild_while_the_live_runner_and_writers_keep_going(store, engine, db_url):
    random_workload(store, 30, seed=8)
    runtime = ProjectionRuntime(engine, load_settings(database_url=db_url, lag_sample_seconds=0.2))
    rebuilder = make_manager(engine, db_url, rebuild_batch_size=25)
    runtime.start()
    reader = Reader(db_url)
    stop_writing = threading.Event()

    def write():
        while not stop_writing.is_set():
            h = History(store)
            h.create()
            h.add_task("x")
            h.start()

    writer = threading.Thread(target=write, daemon=True)
    try:
        runtime.manager.catch_up(timeout=30)
        reader.start()
        writer.start()
        result = rebuilder.rebuild("workflow_summary")
        stop_writing.set()
        writer.join(10)
        reader.finish()
        assert result.finished
        runtime.manager.catch_up(timeout=30)
        # workflows only ever grow: no reader saw the table shrink during the swap
        seen = reader.seen["workflow_summary"]
        assert seen == sorted(seen)
        report = verify(engine)
        assert report.ok, "\n".join(report.lines())
        assert status_of(runtime.manager, "workflow_summary").events_applied == store.count()
    finally:
        stop_writing.set()
        runtime.stop()
        rebuilder.close()


REBUILD_SLOWLY = """
import sys, time
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.projections import ProjectionManager
url = sys.argv[1]
manager = ProjectionManager(make_engine(url), load_settings(database_url=url), rebuild_batch_size=20)
# The pause after each batch is the point: the test kills the rebuild half way.
manager.rebuild("task_summary", progress=lambda done, total: time.sleep(0.05))
"""


def test_killed_rebuild_leaves_the_live_table_untouched_and_the_next_one_resumes(
    store, manager, engine, db_url
):
    random_workload(store, 60, seed=13)
    manager.catch_up(timeout=30)
    with engine.begin() as c:
        c.execute(
            text(
                "UPDATE task_summary SET assignee = 'tampered' WHERE ctid = (SELECT min(ctid) FROM task_summary)"
            )
        )
    before = snapshot(engine, "task_summary")

    proc = subprocess.Popen([sys.executable, "-c", REBUILD_SLOWLY, db_url])
    try:
        wait_until(
            lambda: (status_of(manager, "task_summary").rebuild_done or 0) >= 200,
            30,
            "the rebuild to get going",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()

    assert snapshot(engine, "task_summary") == before  # live untouched, tampered row included
    # The killed process's backend ends (and with it its hold on the rebuild) once the server
    # notices the closed socket, a moment after the kill; on a loaded machine that moment is long.
    wait_until(
        lambda: status_of(manager, "task_summary").rebuild_interrupted,
        30,
        "the rebuild to show as interrupted once its process is gone",
    )
    interrupted = status_of(manager, "task_summary")
    assert interrupted.rebuild_interrupted and 200 <= interrupted.rebuild_done < store.count()
    assert interrupted.state != "rebuilding"

    result = manager.rebuild("task_summary")
    assert result.finished and result.resumed
    assert result.events == store.count() - interrupted.rebuild_done
    assert result.rows_changed == {"task_summary": 2}  # the tampered row: deleted and inserted
    assert verify(engine).ok
    assert status_of(manager, "task_summary").events_applied == store.count()


def test_requested_rebuild_is_carried_out_by_the_runtime(store, engine, db_url):
    random_workload(store, 10, seed=21)
    runtime = ProjectionRuntime(engine, load_settings(database_url=db_url))
    runtime.start()
    try:
        runtime.manager.catch_up(timeout=30)
        with engine.begin() as c:
            c.execute(text("DELETE FROM workflow_activity WHERE position = 1"))
        runtime.manager.request_rebuild("workflow_activity")
        assert status_of(runtime.manager, "workflow_activity").rebuild_requested
        wait_until(
            lambda: not status_of(runtime.manager, "workflow_activity").rebuild_requested,
            20,
            "the runtime to carry out the requested rebuild",
        )
        assert count(engine, "workflow_activity") == store.count()
        assert verify(engine).ok
    finally:
        assert runtime.stop(timeout=10)


def test_a_second_rebuild_of_the_same_projection_is_refused(manager, engine):
    with exclusive(engine, REBUILD_NAMESPACE, "workflow_summary") as taken:
        assert taken
        with pytest.raises(ConcurrencyError, match="already running"):
            manager.rebuild("workflow_summary")


def test_a_shadow_changed_during_the_rebuild_is_not_swapped_in_and_the_next_rebuild_starts_afresh(
    store, manager, engine
):
    random_workload(store, 10, seed=5)
    manager.catch_up(timeout=30)
    before = snapshot(engine, "workflow_activity")

    def tamper(done, total):
        if done and not tampered.is_set():  # between two batches: the shadow exists, no transaction open
            tampered.set()
            with engine.begin() as c:
                c.execute(
                    text(
                        "CREATE TRIGGER planted AFTER INSERT ON cqrs_shadow.workflow_activity "
                        "FOR EACH STATEMENT EXECUTE FUNCTION public.events_notify()"
                    )
                )

    tampered = threading.Event()
    with pytest.raises(RebuildFailed, match="was changed while workflow_activity was being rebuilt"):
        manager.rebuild("workflow_activity", progress=tamper)
    assert snapshot(engine, "workflow_activity") == before
    assert status_of(manager, "workflow_activity").rebuild_error

    result = manager.rebuild("workflow_activity")
    assert result.finished and not result.resumed
    assert snapshot(engine, "workflow_activity") == before
    assert verify(engine).ok


def code_versions(engine) -> dict[str, int]:
    with engine.connect() as c:
        return dict(c.execute(text("SELECT name, code_version FROM projection_control")).all())


def finished_rebuilds(engine) -> set[str]:
    with engine.connect() as c:
        return set(
            c.execute(
                text("SELECT name FROM projection_control WHERE rebuild_finished_at IS NOT NULL")
            ).scalars()
        )


def test_a_projection_whose_code_version_is_raised_is_rebuilt_on_its_own_and_the_others_are_not(
    store, engine, db_url, monkeypatch
):
    from cqrs_core.projections.registry import get_projection

    random_workload(store, 10, seed=31)
    settings = load_settings(database_url=db_url)
    runtime = ProjectionRuntime(engine, settings)
    runtime.start()
    try:
        runtime.manager.catch_up(timeout=30)
        # A fresh database records the code's versions when it creates the rows: nothing to rebuild.
        assert code_versions(engine) == dict.fromkeys(PROJECTION_NAMES, 1)
        assert runtime.manager.requested_rebuilds() == []
    finally:
        assert runtime.stop(timeout=10)
    assert finished_rebuilds(engine) == set()
    with engine.begin() as c:  # rows the old code got wrong: only a rebuild puts them right
        c.execute(text("DELETE FROM task_summary WHERE ctid = (SELECT min(ctid) FROM task_summary)"))
    assert not verify(engine).ok

    # The next build raises task_summary's version: its runtime rebuilds it with nobody asking.
    monkeypatch.setattr(type(get_projection("task_summary")), "version", 2)
    runtime = ProjectionRuntime(engine, settings)
    runtime.start()
    try:
        wait_until(
            lambda: code_versions(engine)["task_summary"] == 2,
            30,
            "the runtime to rebuild task_summary for its new version",
        )
        assert not status_of(runtime.manager, "task_summary").rebuild_requested
    finally:
        assert runtime.stop(timeout=10)
    assert verify(engine).ok
    assert finished_rebuilds(engine) == {"task_summary"}  # the unchanged ones were not rebuilt
    assert code_versions(engine) == {**dict.fromkeys(PROJECTION_NAMES, 1), "task_summary": 2}

    # Once recorded, the same version asks for nothing more.
    again = make_manager(engine, db_url)
    try:
        assert again.requested_rebuilds() == []
    finally:
        again.close()
