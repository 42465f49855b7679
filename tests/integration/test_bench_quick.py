"""`bench --quick` as a smoke test: every figure is produced and sane. It never asserts speed."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import time

import pytest

from cqrs_core.cli.bench import add_parsers
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.read.tables import MATERIALIZED_VIEWS


@pytest.fixture(scope="module")
def quick_report():
    """`bench --quick --json` run once for the module, in-process: (exit code, report, seconds)."""
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "--quick", "--json"])
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = args.handler(args)
    return code, json.loads(out.getvalue()), time.perf_counter() - started


def positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


def test_bench_quick_completes_and_reports_its_own_duration(quick_report):
    code, report, seconds = quick_report

    assert code == 0
    assert report["mode"] == "quick"
    assert 0 < report["seconds"] <= seconds


def test_bench_reports_the_machine_it_ran_on(quick_report):
    machine = quick_report[1]["machine"]

    assert machine["cpus"] >= 1 and machine["memory_gb"] > 0
    assert machine["postgresql"][:2].isdigit() and machine["python"].count(".") == 2
    assert machine["database"] == "temporary embedded server"


def test_raw_insert_baseline_is_measured_for_one_and_four_clients(quick_report):
    raw = quick_report[1]["raw_inserts"]

    assert [r["clients"] for r in raw] == [1, 4]
    assert all(positive(r["per_second"]) and r["rows"] > 0 for r in raw)


def test_writer_processes_phase_measures_raw_and_commands_at_1_2_4_and_8_processes_with_cpu(quick_report):
    writers = quick_report[1]["writers"]

    assert [(w["kind"], w["processes"]) for w in writers] == [
        (kind, n) for n in (1, 2, 4, 8) for kind in ("raw", "commands")
    ]
    for w in writers:
        assert positive(w["per_second"]) and w["writes"] > 0 and w["errors"] == 0
        assert w["p50_ms"] <= w["p95_ms"] <= w["p99_ms"]
        # the embedded server runs on this machine: its backends' CPU is read from /proc
        assert positive(w["client_cpu_ms"]) and positive(w["server_cpu_ms"])
    assert all(w["ratio_to_raw"] == 1.0 for w in writers if w["kind"] == "raw")
    for c in quick_report[1]["commands"]:
        assert positive(c["client_cpu_ms"]) and positive(c["server_cpu_ms"])
    assert all(positive(r["client_cpu_ms"]) for r in quick_report[1]["raw_inserts"])


def test_command_throughput_has_ordered_percentiles_and_a_sane_ratio_to_raw(quick_report):
    commands = quick_report[1]["commands"]

    assert [c["clients"] for c in commands] == [1, 4]
    for c in commands:
        assert positive(c["per_second"]) and c["commands"] > 0 and c["errors"] == 0
        assert 0 < c["p50_ms"] <= c["p95_ms"] <= c["p99_ms"]
        assert 0 < c["ratio_to_raw"] < 10


def test_projection_figures_cover_the_whole_log(quick_report):
    report = quick_report[1]
    catch_up = report["catch_up"]

    assert catch_up["events"] >= 5000 and catch_up["workflows"] > 0
    assert positive(catch_up["events_per_second"]) and positive(catch_up["append_events_per_second"])
    assert set(report["rebuild_seconds"]) == set(PROJECTION_NAMES)
    assert all(positive(s) for s in report["rebuild_seconds"].values())
    assert set(report["view_refresh_seconds"]) == set(MATERIALIZED_VIEWS)
    assert all(positive(s) for s in report["view_refresh_seconds"].values())
    assert not [n for n in report["notes"] if "applied" in n]  # the projections saw every event


def test_query_latency_is_measured_cold_and_warm_for_every_query(quick_report):
    queries = {q["query"]: q for q in quick_report[1]["queries"]}

    assert set(queries) == {"get_workflow", "list_page", "deep_page", "search", "statistics"}
    for q in queries.values():
        assert q["samples"] > 0
        assert 0 < q["cold_p50_ms"] <= q["cold_p95_ms"]
        assert 0 < q["warm_p50_ms"] <= q["warm_p95_ms"]


def test_list_and_search_are_measured_again_at_the_scaled_size(quick_report):
    report = quick_report[1]
    catch_up = report["catch_up"]

    # The catch-up's workflows and the command phases' are in the read model; then it is filled up.
    assert catch_up["workflows"] < report["read_model_workflows"] < report["scaled_workflows"]
    assert report["scaled_workflows"] >= 8000
    scaled = {q["query"]: q for q in report["scaled_queries"]}
    assert set(scaled) == {"list_page", "deep_page", "search"}
    assert all(0 < q["cold_p50_ms"] <= q["cold_p95_ms"] for q in scaled.values())
    pages = math.ceil(report["scaled_workflows"] / 20)
    assert f"of {pages:,} (page size 20)" in scaled["deep_page"]["detail"]


def test_mixed_queries_and_lag_under_load_are_measured(quick_report):
    report = quick_report[1]
    mixed, lag = report["mixed_queries"], report["lag"]

    assert positive(mixed["per_second"]) and mixed["queries"] > 0 and 0 <= mixed["cache_hit_rate"] <= 1
    assert positive(lag["achieved_rate"]) and lag["samples"] > 0
    assert 0 <= lag["p50_ms"] <= lag["p95_ms"] <= lag["max_ms"]
    assert positive(lag["command_p99_ms"])


def test_the_table_names_every_figure(quick_report):
    from cqrs_core.tools.bench import BenchReport, format_report

    report = BenchReport.from_dict(quick_report[1])
    table = format_report(report)

    for label in (
        "raw insert+commit, 1 client",
        "commands, 4 clients",
        "projection catch-up",
        "rebuild task_summary",
        "query deep_page",
        "query list_page, 8,000 workflows",
        "mixed queries",
        "lag p95 under load",
        "refresh stats_task_kind",
    ):
        assert label in table
    assert "PostgreSQL" in table.splitlines()[1]
