"""Migrations are idempotent and safe when several processes start at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url

from cqrs_core.infra.db import make_engine, migrate
from cqrs_core.ops.health import current_revision, head_revision

# Waits for a shared start time so both processes reach the migration lock together.
MIGRATE_AT = """
import json, sys, time
from cqrs_core.infra.db import migrate
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(json.dumps(migrate(sys.argv[1])))
"""


def revision_rows(url: str) -> list[str]:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_migrating_twice_changes_nothing_the_second_time(empty_db_url):
    first = migrate(empty_db_url)
    second = migrate(empty_db_url)

    assert first == [f"base -> {head_revision()}"]
    assert second == []
    assert revision_rows(empty_db_url) == [head_revision()]


def test_a_migrated_database_reports_head(db_url):
    engine = make_engine(db_url, pool_size=1)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert migrate(db_url) == []


def test_two_processes_migrating_at_once_both_succeed_and_apply_once(empty_db_url):
    url = make_url(empty_db_url).render_as_string(hide_password=False)
    start_at = str(time.time() + 3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert sorted(results, key=len) == [[], [f"base -> {head_revision()}"]]
    assert revision_rows(empty_db_url) == [head_revision()]


def test_migration_0007_fills_task_order_and_paused_at_from_the_log(db_url, engine):
    """Rows projected before 0007 get `added_version` (the TaskAdded's stream version, the newest
    for a task removed and added again) and, for a paused workflow, `paused_at` (its last pause)."""
    from workflow_histories import History

    from cqrs_core.domain import events as ev
    from cqrs_core.eventlog.store import EventStore
    from cqrs_core.infra.config import load_settings
    from cqrs_core.projections import ProjectionManager

    h = History(EventStore(engine))
    h.create()
    h.emit(*(ev.TaskAdded(str(uuid.uuid4()), name, "analysis", "bob", None, []) for name in ("b", "a")))
    h.add_task("gone")
    h.remove_task("gone")
    h.start()
    h.pause("first")
    h.resume()
    h.pause("second")
    paused_at = h.clock
    manager = ProjectionManager(engine, load_settings(database_url=db_url))
    try:
        manager.catch_up(timeout=10)
    finally:
        manager.close()

    _migrate(engine, "downgrade", "0006")
    _migrate(engine, "upgrade", "head")
    with engine.connect() as conn:
        order = conn.execute(
            text(
                "SELECT name, added_version FROM task_summary WHERE workflow_id = :w ORDER BY added_version"
            ),
            {"w": h.workflow_id},
        ).all()
        paused = conn.execute(
            text("SELECT paused_at FROM workflow_summary WHERE workflow_id = :w"), {"w": h.workflow_id}
        ).scalar_one()
    assert [tuple(r) for r in order] == [("b", 2), ("a", 3)]
    assert paused == paused_at


def _migrate(engine, step: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from cqrs_core.infra.db import MIGRATIONS_DIR

    with engine.connect() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        getattr(command, step)(cfg, revision)
        conn.commit()


def _rebuilds_requested(engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT name FROM projection_control WHERE rebuild_requested_at IS NOT NULL ORDER BY name"
                )
            ).scalars()
        )


def test_migration_0007_requests_a_rebuild_only_where_older_code_left_tasks_of_ended_workflows_open(
    db_url, engine
):
    """Older code left an ended workflow's running task open in task_summary; upgrading asks the
    runners to rebuild the two read models that fold it (and nothing when no row is wrong)."""
    from workflow_histories import History

    from cqrs_core.eventlog.store import EventStore
    from cqrs_core.infra.config import load_settings
    from cqrs_core.projections import ProjectionManager

    h = History(EventStore(engine))
    h.create()
    h.add_task("measure")
    h.start()
    h.start_task("measure")
    h.complete("done")
    manager = ProjectionManager(engine, load_settings(database_url=db_url))
    try:
        manager.catch_up(timeout=10)
    finally:
        manager.close()

    _migrate(engine, "downgrade", "0006")
    _migrate(engine, "upgrade", "head")
    assert _rebuilds_requested(engine) == []  # the rows are right: no rebuild

    with engine.begin() as conn:  # what older code left behind
        conn.execute(
            text("UPDATE task_summary SET status = 'running' WHERE workflow_id = :w"), {"w": h.workflow_id}
        )
    _migrate(engine, "downgrade", "0006")
    _migrate(engine, "upgrade", "head")
    assert _rebuilds_requested(engine) == ["task_summary", "workflow_summary"]
