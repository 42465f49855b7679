"""The live board: what the live cards show, computed once per refresh interval for every reader
of the process, against a real database. The board's clock is a hand-moved one, so the tests
say which interval a read falls in instead of waiting for one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text

from cqrs_core.app import live
from cqrs_core.app.live import LiveBoard
from cqrs_core.app.runtime import open_runtime
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import CQRSError
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.write.commands import CommandFactory

READERS = 24


class Clock:
    """The board's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(db_url):
    rt = open_runtime(load_settings(database_url=db_url, run_projections=False))
    yield rt
    rt.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def board(runtime, clock):
    return LiveBoard(runtime, clock=clock)


def reads(runtime, query: str) -> int:
    """How many times the app's query bus answered `query` (each is one read of the database)."""
    return next((s.count for s in runtime.service.metrics().queries if s.name == query), 0)


def create_workflow(runtime, title: str = "Study") -> None:
    runtime.service.execute_command(
        CommandFactory(actor="alice", role="researcher").create_research_workflow(
            title=title, research_question="Does it work?", methodology="exploratory"
        )
    )


def all_at_once(read, readers: int = READERS) -> list:
    """`read()` on `readers` threads released together."""
    start = threading.Barrier(readers)

    def one(_):
        start.wait()
        return read()

    with ThreadPoolExecutor(readers) as pool:
        return list(pool.map(one, range(readers)))


def test_many_concurrent_readers_share_one_computation_per_interval(runtime, board):
    create_workflow(runtime)

    snapshots = all_at_once(board.projections)

    assert reads(runtime, "GetProjectionStatus") == 1
    assert all(s is snapshots[0] for s in snapshots)  # one snapshot, with its tables, for everyone
    card = snapshots[0].value
    assert snapshots[0].error is None and card.head == 1
    assert {s.name for s in card.statuses} == set(card.grid["Projection"].to_pylist())


def test_the_next_interval_computes_again_and_shows_what_changed(runtime, board, clock):
    first = board.projections()
    create_workflow(runtime)
    assert board.projections() is first  # the same interval: the same snapshot, the change not yet read

    clock.now += live.PROJECTIONS_SECONDS
    second = all_at_once(board.projections)[0]

    assert second is not first and second.value.head == first.value.head + 1
    assert reads(runtime, "GetProjectionStatus") == 2


def test_a_reader_that_asks_for_data_after_a_moment_gets_a_fresher_snapshot_for_everyone(
    runtime, board, clock
):
    first = board.projections()
    create_workflow(runtime)  # this session's own change ...
    clock.now += 0.1  # ... still in the same interval
    acted = clock()

    fresh = board.projections(since=acted)

    assert fresh is not first and fresh.started >= acted and fresh.value.head == first.value.head + 1
    assert board.projections() is fresh  # the fresher snapshot now serves every reader of the interval
    assert reads(runtime, "GetProjectionStatus") == 2


def test_snapshots_are_kept_apart_by_their_parameters(runtime, board):
    runtime.service.projections.sample_lag()

    events = board.lag_chart("Lag (events)", 15)
    seconds = board.lag_chart("Lag (seconds)", 15)
    shorter = board.lag_chart("Lag (events)", 5)

    assert board.lag_chart("Lag (events)", 15) is events
    assert events.value.spec["title"] == "Lag (events) per projection, last 15 minutes"
    assert seconds.value.spec["title"] == "Lag (seconds) per projection, last 15 minutes"
    assert shorter.value.spec["title"] == "Lag (events) per projection, last 5 minutes"
    assert events.value.data.column_names == ["time", "projection", "lag_events"]
    assert seconds.value.data.column_names == ["time", "projection", "lag_seconds"]
    assert events.value.samples == seconds.value.samples == len(PROJECTION_NAMES)  # one per projection
    assert reads(runtime, "GetLagHistory") == 2  # one read per window, whatever the measure


def test_a_failing_item_shows_its_error_to_its_readers_and_spares_the_others(runtime, board, clock):
    calls = []

    def broken():
        calls.append(1)
        raise CQRSError("The report could not be made; try again in a moment.")

    failed = all_at_once(lambda: board.snapshot("report", (), 5, broken))

    assert len(calls) == 1  # one failure per interval, not one per reader
    assert all(s is failed[0] and s.value is None for s in failed)
    assert failed[0].error.user_message == "The report could not be made; try again in a moment."
    healthy = board.projections()
    assert healthy.error is None and healthy.value.statuses  # other items are not poisoned

    clock.now += 5
    board.snapshot("report", (), 5, broken)
    assert len(calls) == 2  # the next interval tries again


def test_a_bug_in_a_producer_is_one_sentence_for_readers_and_a_traceback_in_the_log(board, caplog):
    snapshot = board.snapshot("report", (), 5, lambda: 1 / 0)

    assert snapshot.error.user_message == "Something went wrong on our side; the server log has the details."
    assert "ZeroDivisionError" in caplog.text


def test_a_refused_query_fails_only_its_own_item(runtime, board):
    runtime.service.projections.sample_lag()

    refused = board.projection_lag_chart("no_such_projection", 5)

    assert refused.value is None and "no projection named 'no_such_projection'" in refused.error.user_message
    assert board.projection_lag_chart("task_summary", 5).value.samples == 1
    assert board.lag_chart("Lag (events)", 15).value.samples == len(PROJECTION_NAMES)
    assert board.health().value.overall in ("healthy", "degraded", "unhealthy")


def copy_samples(runtime, shift: str, projection: str | None = None) -> None:
    """Copy the lag samples of the last 30 s (of `projection`, or all) to `shift` earlier, as if
    written then."""
    with runtime.service.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO lag_samples SELECT projection, sampled_at - CAST(:shift AS interval), position, "
                "head, lag_events, lag_seconds, events_per_second, events_applied FROM lag_samples "
                "WHERE sampled_at > clock_timestamp() - interval '30 seconds' "
                "AND (CAST(:p AS text) IS NULL OR projection = :p)"
            ),
            {"shift": shift, "p": projection},
        )


def test_each_lag_window_reads_on_from_its_newest_sample_and_equals_a_full_read(runtime, board, clock):
    manager = runtime.service.projections
    manager.sample_lag()
    copy_samples(runtime, "1 minute")  # samples from a minute ago, kept from the first read on
    first = board.lag_samples(15).value
    newest = first["time"].max()
    copy_samples(runtime, "2 seconds", "task_summary")  # one that committed late, older than `newest`
    manager.sample_lag()

    clock.now += live.PROJECTIONS_SECONDS
    window = board.lag_samples(15).value
    full = LiveBoard(runtime).lag_samples(15).value  # a board of its own reads the whole window

    n = len(PROJECTION_NAMES)  # a sample each, a copy each, then one late copy and a sample each
    assert len(first) == 2 * n and len(window) == 3 * n + 1
    in_order = ["time", "projection"]
    assert (
        window.sort_values(in_order)
        .reset_index(drop=True)
        .equals(full.sort_values(in_order).reset_index(drop=True))
    )
    late = (window["projection"] == "task_summary") & (window["time"] < newest - timedelta(seconds=1))
    assert late.sum() == 2  # the minute-old sample and the late one


def test_the_health_card_has_one_line_per_projection_and_the_overall_status(runtime, board):
    runtime.service.projections.pause("task_summary")

    card = board.health().value

    rows = dict(zip(card.table["Component"].to_pylist(), card.table["Status"].to_pylist(), strict=True))
    assert rows["projection task_summary"] == "degraded" and "projections" not in rows
    assert card.overall in ("degraded", "unhealthy")


def test_the_overview_card_counts_workflows_and_lists_recent_activity(runtime, board):
    create_workflow(runtime, title="<b>bold</b> [link](javascript:alert(1))")
    runtime.service.projections.catch_up(timeout=20)

    card = board.overview().value

    assert card.overview.workflows_total == 1
    # shown as typed: the table cell is plain text, never markup
    assert card.activity["workflow"].to_pylist() == ["<b>bold</b> [link](javascript:alert(1))"]


def test_the_metrics_card_tables_what_this_process_ran(runtime, board):
    create_workflow(runtime)

    card = board.metrics().value

    assert card.commands_total == 1
    assert card.commands["Command"].to_pylist() == ["CreateResearchWorkflow"]
    assert set(card.latency_chart.data["percentile"].to_pylist()) == {"p50", "p95", "p99"}
    assert card.errors is None and card.refusals is None


def test_chart_specs_hold_no_data_so_a_refresh_keeps_the_chart(board, runtime, clock):
    runtime.service.projections.sample_lag()
    before = board.lag_chart("Lag (events)", 15).value
    clock.now += 10 * live.PROJECTIONS_SECONDS  # a later interval
    after = board.lag_chart("Lag (events)", 15).value

    assert after.spec is before.spec  # the same spec object: Streamlit keeps the chart's view
    for spec in (before.spec, live.projection_lag_spec("task_summary", 5), live.latency_chart_spec()):
        assert "data" not in spec and "datasets" not in spec


def test_the_lag_window_keeps_samples_in_time_order(runtime, board, clock):
    manager = runtime.service.projections
    for _ in range(3):
        manager.sample_lag()
        clock.now += live.PROJECTIONS_SECONDS
        window = board.lag_samples(5).value
        assert window["time"].is_monotonic_increasing
    assert window["time"].max() - window["time"].min() < timedelta(minutes=5)
