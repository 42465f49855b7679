"""`run_bench`: every phase, in order, on a fresh scratch database."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TextIO

from sqlalchemy import text

from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import migrate
from cqrs_core.tools.bench.harness import (
    DEFAULT,
    FULL,
    QUICK,
    BenchContext,
    Sizes,
    machine_facts,
    progress_printer,
    scratch_database,
    through_pooler,
)
from cqrs_core.tools.bench.projections import (
    measure_catch_up,
    measure_lag_under_load,
    measure_rebuilds,
    measure_view_refresh,
)
from cqrs_core.tools.bench.read_path import (
    measure_mixed_queries,
    measure_query_latency,
    measure_scaled_queries,
    vacuum,
)
from cqrs_core.tools.bench.report import BenchReport
from cqrs_core.tools.bench.write_path import measure_write_path
from cqrs_core.tools.bench.writers import measure_writers


def run_bench(
    quick: bool = False,
    full: bool = False,
    events: int | None = None,
    url: str | None = None,
    *,
    log: TextIO | None = None,
    settings: Settings | None = None,
    through: str | None = None,
    peer: bool = False,
) -> BenchReport:
    """Run every measurement on a fresh database and return the report. `quick` uses small
    sizes (under a minute), `full` large ones; `events` overrides the catch-up/rebuild size.
    `log` receives one line per phase. `through`: the URL of a pooler in transaction mode in front
    of `url`'s server; the commands and queries go through it (see `BenchContext`). `peer`: the
    writer-processes phase also runs the `eventsourcing` library (a development dependency)."""
    sizes = QUICK if quick else FULL if full else DEFAULT
    if events is not None:
        sizes = Sizes(**{**asdict(sizes), "events": events})
    mode = "quick" if quick else "full" if full else "default"
    # Tuning knobs (checkpoint interval, cache, timeouts) come from the environment; the database
    # never does: a configured CQRS_READ_DATABASE_URL must not send the bench's reads elsewhere.
    settings = (settings or get_settings()).model_copy(
        update={"database_url": None, "read_database_url": None, "direct_database_url": None}
    )
    say = progress_printer(log)
    started = time.perf_counter()
    with scratch_database(url, say) as (db_url, where):
        migrate(db_url)
        pooled_url = through_pooler(through, db_url) if through else None
        ctx = BenchContext(db_url, settings, sizes, say, pooled_url)
        try:
            return _run_phases(ctx, mode, where, started, peer)
        finally:
            ctx.close()


def _run_phases(ctx: BenchContext, mode: str, where: str, started: float, peer: bool = False) -> BenchReport:
    from cqrs_core.projections import ProjectionManager

    machine = machine_facts(ctx, where)
    one, four = measure_write_path(ctx, 1), measure_write_path(ctx, 4)
    raw, commands = [one[0], four[0]], [one[1], four[1]]
    manager = ProjectionManager(ctx.engine, ctx.settings)
    try:
        catch_up = measure_catch_up(ctx, manager)
        with ctx.engine.connect() as conn:  # the catch-up's workflows and the command phases'
            listed = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
        rebuilds = measure_rebuilds(ctx, manager)
        views = measure_view_refresh(ctx, manager)
        vacuum(ctx)
        queries = measure_query_latency(ctx)
        mixed = measure_mixed_queries(ctx)
        lag = measure_lag_under_load(ctx, manager)
    finally:
        manager.close()
    scaled, scaled_queries = measure_scaled_queries(ctx)
    # Last: its thousands of new workflows would change the sizes the phases above are measured at.
    writers = measure_writers(ctx, peer)
    notes = ctx.notes
    if lag.achieved_rate < 0.9 * lag.target_rate:
        notes.append(
            f"the command load reached {lag.achieved_rate:,.0f} of the {lag.target_rate:,.0f} "
            "commands/s asked for; the lag figure is for that rate"
        )
    return BenchReport(
        mode,
        machine,
        raw,
        commands,
        catch_up,
        rebuilds,
        queries,
        mixed,
        lag,
        views,
        time.perf_counter() - started,
        notes,
        scaled_workflows=scaled,
        scaled_queries=scaled_queries,
        read_model_workflows=listed,
        writers=writers,
    )
