"""Migrations are idempotent and safe when several processes start at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

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
