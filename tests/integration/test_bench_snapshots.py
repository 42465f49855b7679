"""`bench-snapshots` on a small stream: the figures are produced, and the snapshot it measures is
real (taken at the interval, then used). It never asserts speed."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

from sqlalchemy import create_engine, text

from cqrs_core.cli.bench import add_parsers
from cqrs_core.infra.config import load_settings
from cqrs_core.tools.bench.snapshots import BENCH_SNAPSHOT_EVERY, format_snapshot_load, measure_snapshot_load


def test_the_snapshot_bench_times_both_loads_on_a_long_stream(db_url):
    result = measure_snapshot_load(db_url, load_settings(), events=1_200, runs=2)

    assert (result.events, result.runs) == (1_200, 2)
    assert result.replay_ms > 0 and result.snapshot_ms > 0 and result.first_with_snapshots_ms > 0
    assert result.speedup == result.replay_ms / result.snapshot_ms
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            total = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
            [snapshot] = conn.execute(text("SELECT version, state FROM aggregate_snapshots")).all()
    finally:
        engine.dispose()
    # 1,200 filled, 3 timed without snapshots (a warm-up and 2), one taking it, 3 from it.
    assert total == 1_200 + 3 + 1 + 3
    assert snapshot.version == 1_200 + 3 + 1 and BENCH_SNAPSHOT_EVERY <= snapshot.version
    assert snapshot.state["title"] == "Bench: a workflow with a long history"
    assert "snapshot + events after it" in format_snapshot_load(result)


def test_the_bench_snapshots_verb_prints_json(pg_admin_url):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["bench-snapshots", "--events", "600", "--runs", "1", "--url", pg_admin_url, "--json"]
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.handler(args) == 0
    figures = json.loads(out.getvalue())
    assert figures["events"] == 600 and figures["snapshot_ms"] > 0
