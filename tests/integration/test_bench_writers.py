"""The writer-processes phase of `bench` with its peer (`--peer`, the eventsourcing library, a
development dependency) on a database of its own. It never asserts speed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cqrs_core.infra.config import load_settings
from cqrs_core.tools.bench.harness import QUICK, BenchContext
from cqrs_core.tools.bench.report import BenchReport
from cqrs_core.tools.bench.writers import measure_writers

pytest.importorskip("eventsourcing", reason="the development dependencies are not installed")


def test_the_peer_writes_in_separate_processes_next_to_raw_inserts_and_our_commands(db_url):
    ctx = BenchContext(
        db_url, load_settings(database_url=db_url), replace(QUICK, raw_seconds=0.4), lambda _: None
    )
    try:
        figures = measure_writers(ctx, peer=True, levels=(1, 2))
        with ctx.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM application_events").scalar_one()
    finally:
        ctx.close()

    assert [(f.kind, f.processes) for f in figures] == [
        (kind, n) for n in (1, 2) for kind in ("raw", "commands", "peer")
    ]
    peer = [f for f in figures if f.kind == "peer"]
    assert stored >= sum(f.writes for f in peer) > 0  # the library's own table, on the same database
    assert all(f.errors == 0 and f.client_cpu_ms > 0 for f in figures)


def test_a_report_with_writer_figures_reads_back_from_its_json():
    from cqrs_core.tools.bench.report import WriterFigure

    report = BenchReport.from_dict(
        {
            **_minimal_report(),
            "writers": [
                WriterFigure("peer", 8, 10, 0, 1.0, 10.0, 0.5, 1.0, 2.0, 3.0, 0.4, None, 1.5).__dict__
            ],
        }
    )

    assert report.writers[0].kind == "peer" and report.writers[0].server_cpu_ms is None


def _minimal_report() -> dict:
    lag = dict(
        target_rate=1, achieved_rate=1, seconds=1, samples=1, p50_ms=1, p95_ms=1, max_ms=1, command_p99_ms=1
    )
    machine = dict(
        cpus=2, memory_gb=1, postgresql="15", python="3.11.7", platform="x", database="d", load_average=0
    )
    return {
        "mode": "quick",
        "machine": machine,
        "raw_inserts": [],
        "commands": [],
        "catch_up": dict(
            events=1,
            workflows=1,
            append_seconds=1,
            append_events_per_second=1,
            seconds=1,
            events_per_second=1,
        ),
        "rebuild_seconds": {},
        "queries": [],
        "mixed_queries": dict(threads=1, queries=1, seconds=1, per_second=1, cache_hit_rate=1),
        "lag": lag,
        "view_refresh_seconds": {},
        "seconds": 1,
    }
