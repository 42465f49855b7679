"""Lag samples (written, rated, pruned) and the statistics materialized views."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from workflow_histories import random_workload

from cqrs_core.infra.config import load_settings
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.read.tables import MATERIALIZED_VIEWS


@pytest.fixture
def manager(engine, db_url):
    m = ProjectionManager(engine, load_settings(database_url=db_url, lag_retention_minutes=30))
    yield m
    m.close()


def test_lag_samples_record_position_head_lag_and_rate(store, manager):
    random_workload(store, 10)
    head = store.head()
    before = {s.projection: s for s in manager.sample_lag()}
    assert set(before) == set(PROJECTION_NAMES)
    assert all(
        (s.position, s.head, s.lag_events, s.events_per_second) == (0, head, store.count(), 0.0)
        for s in before.values()
    )
    manager.catch_up(timeout=10)
    after = {s.projection: s for s in manager.sample_lag()}
    assert all((s.position, s.lag_events, s.lag_seconds) == (head, 0, 0.0) for s in after.values())
    assert all(s.events_per_second > 0 for s in after.values())
    history = manager.lag_history("workflow_summary", datetime.now(UTC) - timedelta(minutes=1))
    assert [s.lag_events for s in history] == [store.count(), 0]
    assert len(manager.lag_history(None, datetime.now(UTC) - timedelta(minutes=1))) == 2 * len(
        PROJECTION_NAMES
    )
    assert {s.name: s.events_per_second for s in manager.status()} == {
        n: after[n].events_per_second for n in PROJECTION_NAMES
    }


def test_a_sample_too_soon_after_another_is_skipped(manager):
    assert len(manager.sample_lag(min_interval=60)) == len(PROJECTION_NAMES)
    assert manager.sample_lag(min_interval=60) == []


def test_old_lag_samples_are_pruned(manager, engine):
    manager.sample_lag()
    with engine.begin() as c:
        c.execute(
            text(
                """INSERT INTO lag_samples (projection, sampled_at, position, head, lag_events, lag_seconds, events_per_second, events_applied)
               SELECT 'workflow_summary', now() - make_interval(mins => m), 0, 0, 0, 0, 0, 0 FROM generate_series(31, 120) m"""
            )
        )
    assert manager.prune_lag_samples() == 90
    assert len(manager.lag_history(None, datetime.now(UTC) - timedelta(days=1))) == len(PROJECTION_NAMES)


# Each statistic written independently of the view definitions: from the rows, in SQL of another shape.
EXPECTED = {
    "stats_daily_throughput": """
        WITH days AS (
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day FROM workflow_summary
            UNION SELECT (finished_at AT TIME ZONE 'UTC')::date FROM workflow_summary
                  WHERE status IN ('completed', 'failed', 'cancelled'))
        SELECT d.day,
               (SELECT count(*) FROM workflow_summary w WHERE (w.created_at AT TIME ZONE 'UTC')::date = d.day) AS created,
               (SELECT count(*) FROM workflow_summary w WHERE w.status = 'completed' AND (w.finished_at AT TIME ZONE 'UTC')::date = d.day) AS completed,
               (SELECT count(*) FROM workflow_summary w WHERE w.status = 'failed' AND (w.finished_at AT TIME ZONE 'UTC')::date = d.day) AS failed,
               (SELECT count(*) FROM workflow_summary w WHERE w.status = 'cancelled' AND (w.finished_at AT TIME ZONE 'UTC')::date = d.day) AS cancelled
        FROM days d""",
    "stats_methodology_outcomes": """
        SELECT m.methodology, m.total, m.completed, m.failed, m.cancelled, m.total - m.completed - m.failed - m.cancelled AS open,
               CASE WHEN m.completed + m.failed + m.cancelled > 0
                    THEN m.completed::float8 / (m.completed + m.failed + m.cancelled) END AS success_rate,
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds) FROM workflow_summary w
                 WHERE w.methodology = m.methodology AND w.status = 'completed') AS median_duration_seconds,
               (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_seconds) FROM workflow_summary w
                 WHERE w.methodology = m.methodology AND w.status = 'completed') AS p90_duration_seconds,
               m.tasks::float8 / m.total AS mean_tasks
        FROM (SELECT methodology, count(*) AS total, sum(task_total) AS tasks,
                     sum(CASE status WHEN 'completed' THEN 1 ELSE 0 END) AS completed,
                     sum(CASE status WHEN 'failed' THEN 1 ELSE 0 END) AS failed,
                     sum(CASE status WHEN 'cancelled' THEN 1 ELSE 0 END) AS cancelled
              FROM workflow_summary GROUP BY methodology) m""",
    "stats_task_kind": """
        SELECT k.kind, k.total, k.completed, k.failed, k.retries,
               CASE WHEN k.completed + k.failed > 0 THEN k.failed::float8 / (k.completed + k.failed) END AS failure_rate,
               CASE WHEN k.started > 0 THEN k.retried::float8 / k.started END AS retry_rate,
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds) FROM task_summary t
                 WHERE t.kind = k.kind AND t.status = 'completed') AS p50_duration_seconds,
               (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_seconds) FROM task_summary t
                 WHERE t.kind = k.kind AND t.status = 'completed') AS p90_duration_seconds
        FROM (SELECT kind, count(*) AS total,
                     sum(CASE status WHEN 'completed' THEN 1 ELSE 0 END) AS completed,
                     sum(CASE status WHEN 'failed' THEN 1 ELSE 0 END) AS failed,
                     sum(CASE WHEN attempts > 1 THEN attempts - 1 ELSE 0 END) AS retries,
                     sum(CASE WHEN attempts > 1 THEN 1 ELSE 0 END) AS retried,
                     sum(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS started
              FROM task_summary GROUP BY kind) k""",
    "stats_assignee_load": """
        SELECT assignee,
               sum(CASE WHEN status IN ('pending', 'running') THEN 1 ELSE 0 END) AS open_tasks,
               sum(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running_tasks,
               sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed_tasks,
               sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed_tasks,
               count(*) AS total_tasks
        FROM task_summary GROUP BY assignee""",
}


def normalised(rows):
    def clean(value):
        if isinstance(value, Decimal):  # sum() of integers comes back as numeric
            return int(value)
        return round(value, 9) if isinstance(value, float) else value

    return sorted((tuple(clean(v) for v in r) for r in rows), key=repr)


def test_each_materialized_view_equals_a_direct_aggregate_of_the_read_models(store, manager, engine):
    random_workload(store, 60, seed=11)
    manager.catch_up(timeout=30)
    with engine.connect() as c:
        assert all(c.execute(text(f"SELECT count(*) FROM {v}")).scalar() == 0 for v in MATERIALIZED_VIEWS)
    refreshed = manager.refresh_views()
    assert [r.view_name for r in refreshed] == list(MATERIALIZED_VIEWS)
    with engine.connect() as c:
        for view, sql in EXPECTED.items():
            columns = list(c.execute(text(f"SELECT * FROM {view} LIMIT 0")).keys())
            got = normalised(c.execute(text(f"SELECT {', '.join(columns)} FROM {view}")))
            want = normalised(c.execute(text(f"SELECT {', '.join(columns)} FROM ({sql}) AS expected")))
            assert got and got == want, view
        assert c.execute(text("SELECT sum(created) FROM stats_daily_throughput")).scalar() == 60
        assert (
            c.execute(text("SELECT sum(total_tasks) FROM stats_assignee_load")).scalar()
            == c.execute(text("SELECT count(*) FROM task_summary")).scalar()
        )


def test_view_refresh_records_when_and_how_long(manager, store):
    fresh = {f.view_name: f for f in manager.view_freshness()}
    assert set(fresh) == set(MATERIALIZED_VIEWS) and all(f.refreshed_at is None for f in fresh.values())
    random_workload(store, 5)
    manager.catch_up(timeout=10)
    manager.refresh_views()
    fresh = {f.view_name: f for f in manager.view_freshness()}
    assert all(f.refreshed_at is not None and f.duration_ms > 0 for f in fresh.values())
    assert fresh["stats_methodology_outcomes"].row_count >= 1
    assert manager.refresh_views(min_age=60) == []  # just done: a scheduled refresh leaves them alone
