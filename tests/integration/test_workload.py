"""The demo workload: deterministic plans, run through the command bus, and `demo seed|load|reset`."""

from __future__ import annotations

import argparse
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from cqrs_core import CQRSServiceBuilder, QueryFactory
from cqrs_core.cli.workload import add_parsers
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import InfrastructureError
from cqrs_core.ops.reset import reset
from cqrs_core.tools.workload.plans import WorkloadGenerator
from cqrs_core.tools.workload.runners import run_plans, run_steady_load, seed
from cqrs_core.tools.workload.vocabulary import OUTCOMES
from cqrs_core.write.commands import CreateResearchWorkflow

END = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
# With this seed, 30 workflows include every finished lifecycle (checked by the first assertions).
SEED = 11


@pytest.fixture
def service(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_rate_limit(1e9, 10**9)
        .build()
    )
    yield svc
    svc.close()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def commands_of(plans):
    return [c.model_dump() for p in plans for c in p.commands]


def table_counts(engine) -> dict[str, int]:
    tables = (
        "events",
        "command_log",
        "workflow_summary",
        "task_summary",
        "workflow_activity",
        "lag_samples",
        "view_refreshes",
        "stats_daily_throughput",
        "stats_task_kind",
    )
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


# ---------------------------------------------------------------- the generator


def test_the_same_seed_yields_the_same_command_sequence():
    first = list(WorkloadGenerator(SEED, end=END).workflows(20))
    second = list(WorkloadGenerator(SEED, end=END).workflows(20))

    assert commands_of(first) == commands_of(second)
    assert len({c["command_id"] for c in commands_of(first)}) == sum(len(p.commands) for p in first)


def test_different_seeds_yield_different_workflows():
    a = [p.commands[0].title for p in WorkloadGenerator(1, end=END).workflows(10)]
    b = [p.commands[0].title for p in WorkloadGenerator(2, end=END).workflows(10)]

    assert a != b


def test_workflows_have_3_to_12_tasks_in_dependency_order_and_research_sounding_text():
    for plan in WorkloadGenerator(SEED, end=END).workflows(200):
        create = plan.commands[0]
        assert isinstance(create, CreateResearchWorkflow)
        assert 3 <= len(create.tasks) <= 12
        seen = set()
        for task in create.tasks:
            assert set(task.depends_on) <= seen  # a DAG built in order
            seen.add(task.task_id)
        assert create.research_question.endswith("?") and len(create.title) > 15
        assert 1 <= len(create.tags) <= 4


def test_backfilled_history_lies_within_the_span_and_in_order():
    for plan in WorkloadGenerator(SEED, days=30, end=END).workflows(200):
        times = [c.occurred_at for c in plan.commands]
        assert all(END - timedelta(days=30) <= t <= END for t in times)
        assert times == sorted(times)


def test_back_filled_finishes_are_spread_over_the_days_with_no_spike_on_the_last():
    """Workflows finish about as often on the last day as on any other: no day has more than
    twice the mean of the others (the seed once put 103 on its last day against about 20)."""
    days = 90
    plans = list(WorkloadGenerator(SEED, days=days, end=END).workflows(2000))
    finished = Counter(
        int((END - plan.commands[-1].occurred_at) / timedelta(days=1))
        for plan in plans
        if plan.final_status in ("completed", "failed", "cancelled")
    )
    assert set(finished) <= set(range(days + 1))  # day 0: the last 24 hours before END
    for day in range(days):
        others = [finished[d] for d in range(days) if d != day]
        assert finished[day] <= 2 * sum(others) / len(others), (day, finished[day], sorted(others))


def test_live_load_plans_leave_the_time_to_the_commit_clock():
    plan = WorkloadGenerator(SEED, backfill=False).workflow()

    assert all(c.occurred_at is None for c in plan.commands)


def test_lifecycle_mix_is_close_to_the_intended_shares():
    outcomes = Counter(p.outcome for p in WorkloadGenerator(3, end=END).workflows(2000))

    assert 0.50 < outcomes["completed"] / 2000 < 0.60
    assert 0.11 < outcomes["retried"] / 2000 < 0.19
    assert 0.07 < outcomes["failed"] / 2000 < 0.13
    assert 0.07 < outcomes["cancelled"] / 2000 < 0.13
    assert set(outcomes) == set(OUTCOMES)


# ---------------------------------------------------------------- through the command bus


def test_a_seed_runs_every_lifecycle_through_the_command_bus(service):
    plans = list(WorkloadGenerator(SEED, end=END).workflows(30))
    assert {"completed", "retried", "failed", "cancelled"} <= {p.outcome for p in plans}

    report = seed(service, 30, seed=SEED, end=END, threads=4)

    assert report.failed_workflows == 0, report.errors
    assert report.workflows == 30
    assert report.commands == sum(len(p.commands) for p in plans) and report.duplicates == 0
    with service.engine.connect() as conn:
        streams = conn.execute(text("SELECT count(DISTINCT stream_id) FROM events")).scalar_one()
        retried = conn.execute(
            text("SELECT count(DISTINCT stream_id) FROM events WHERE event_type = 'TaskRetried'")
        ).scalar_one()
        stored = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
    assert streams == 30 and stored == report.events
    assert retried >= sum(p.outcome in ("retried", "failed") for p in plans)

    service.projections.catch_up(timeout=60)
    page = service.execute_query(QueryFactory().get_workflow_list(page_size=100), cache=False)
    assert page.total == 30
    by_status = Counter(item["status"] for item in page.items)
    assert by_status == Counter(p.final_status for p in plans)
    failed = service.execute_query(
        QueryFactory().get_workflow(next(p.workflow_id for p in plans if p.outcome == "failed")), cache=False
    )
    assert any(
        t["status"] == "failed" and t["attempts"] == service.settings.max_task_attempts for t in failed.tasks
    )


def test_running_the_same_seed_again_changes_nothing(service):
    seed(service, 10, seed=SEED, end=END, threads=2)
    before = service.event_store.count()

    again = seed(service, 10, seed=SEED, end=END, threads=2)

    assert service.event_store.count() == before
    assert again.duplicates == again.commands > 0 and again.events == 0


def read_models(service) -> dict[str, list[tuple]]:
    """Every read model row (minus what only the commit clock decides), in a fixed order."""
    queries = {
        "workflow_summary": "SELECT workflow_id, title, status, priority, tags, created_at, started_at, finished_at, "
        "task_total, task_completed, task_failed, task_cancelled, version "
        "FROM workflow_summary ORDER BY workflow_id",
        "task_summary": "SELECT * FROM task_summary ORDER BY workflow_id, task_id",
        "events": "SELECT stream_id, version, event_type, payload, command_id, occurred_at FROM events "
        "ORDER BY stream_id, version",
    }
    with service.engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(text(sql))] for name, sql in queries.items()}


def test_batched_seed_and_one_command_at_a_time_build_the_same_history(service):
    seed(service, 25, seed=SEED, end=END, threads=1, batch=1)
    service.projections.catch_up(timeout=60)
    one_by_one = read_models(service)
    reset(service.engine)

    report = seed(service, 25, seed=SEED, end=END, threads=2, batch=4)
    service.projections.catch_up(timeout=60)

    assert report.workflows == 25 and report.failed_workflows == 0 and report.duplicates == 0
    assert read_models(service) == one_by_one
    assert len(one_by_one["events"]) == report.events and len(one_by_one["workflow_summary"]) == 25


def test_a_refused_batch_falls_back_to_one_command_at_a_time(service):
    plans = list(WorkloadGenerator(SEED, end=END).workflows(6))
    # Another writer already took the third workflow's id: its create is refused, so the batch is
    # refused whole; run again one by one, the other five land and the third stops at its create.
    taken = plans[2].commands[0].model_copy(update={"command_id": uuid.uuid4()})
    service.execute_command(taken, trusted_import=True)  # back-dated, as the plans are

    report = run_plans(service, iter(plans), 6, threads=1, batch=6)

    assert report.workflows == 5 and report.failed_workflows == 1
    assert list(report.errors) == [f"validation: Workflow {plans[2].workflow_id} already exists."]
    with service.engine.connect() as conn:
        streams = conn.execute(text("SELECT count(DISTINCT stream_id) FROM events")).scalar_one()
    assert streams == 6


def test_steady_load_sends_one_command_per_slot_of_the_schedule(service):
    report = run_steady_load(service, rate=40, duration=1.0, threads=2, seed=SEED)

    assert report.commands + report.dropped == 40 and report.commands > 0 and not report.errors
    assert 0 < report.achieved_rate <= 40.5
    assert 0 < report.p50_ms <= report.p95_ms <= report.p99_ms <= report.max_ms


# ---------------------------------------------------------------- demo reset


def test_demo_reset_empties_the_log_the_command_log_and_every_read_model(service, db_url, use_database):
    seed(service, 8, seed=SEED, end=END, threads=2)
    service.projections.catch_up(timeout=60)
    service.projections.sample_lag()
    service.projections.refresh_views()
    assert all(n > 0 for n in table_counts(service.engine).values())
    use_database(db_url)

    code = run_cli(["demo", "reset", "--yes"])

    assert code == 0
    assert set(table_counts(service.engine).values()) == {0}
    statuses = service.projections.status()
    assert {(s.position, s.lag_events) for s in statuses} == {(0, 0)}
    # The system works on afterwards: new workflows get projected from the start of the log.
    seed(service, 2, seed=SEED + 1, end=END, threads=1)
    service.projections.catch_up(timeout=60)
    assert service.execute_query(QueryFactory().get_workflow_list(), cache=False).total == 2


def test_demo_reset_asks_first_and_deletes_nothing_unless_told_yes(
    service, db_url, use_database, monkeypatch, capsys
):
    seed(service, 2, seed=SEED, end=END, threads=1)
    use_database(db_url)
    monkeypatch.setattr("builtins.input", lambda prompt: "no")

    code = run_cli(["demo", "reset"])

    assert code == 0 and "Nothing was deleted" in capsys.readouterr().out
    assert service.event_store.count() > 0


def test_reset_refuses_quickly_while_another_transaction_holds_the_log(service):
    seed(service, 1, seed=SEED, end=END, threads=1)
    with service.engine.connect() as holder:
        holder.execute(text("LOCK TABLE command_log IN ACCESS SHARE MODE"))
        with pytest.raises(InfrastructureError, match="stop the app and workers"):
            reset(service.engine, lock_timeout_seconds=0.2)
        holder.rollback()
    assert service.event_store.count() > 0
