"""The read path: each query's latency cold (cache off) and warm, the list and search queries again
on a larger read model, and a mix of what the pages read on a few threads through the cache."""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import text

from cqrs_core.read.queries import Query, QueryFactory
from cqrs_core.tools.bench.harness import BENCH_SEED, BenchContext, timings
from cqrs_core.tools.bench.report import MixedQueries, QueryLatency

# (figure name, detail for the report, the i-th sample's query)
Case = tuple[str, str, Callable[[int], Query]]


def vacuum(ctx: BenchContext) -> None:
    """VACUUM ANALYZE, as autovacuum would soon after a bulk load: fresh statistics for the
    planner and a visibility map for index-only scans. Without it, cold figures right after
    the rebuilds swing from run to run."""
    with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")


def measure_query_latency(ctx: BenchContext) -> list[QueryLatency]:
    """One workflow, the list pages, search and the statistics, each cold and warm."""
    qf = QueryFactory()
    rng = random.Random(BENCH_SEED)
    ids = ctx.workflow_ids or [uuid.uuid4()]
    cases: list[Case] = [
        (
            "get_workflow",
            "one workflow with its tasks and activity",
            lambda i: qf.get_workflow(rng.choice(ids)),
        ),
        *_list_cases(ctx),
        ("statistics", "every statistics view", lambda i: qf.get_statistics()),
    ]
    return _latencies(ctx, cases, "")


def _list_cases(ctx: BenchContext) -> list[Case]:
    qf = QueryFactory()
    everything = ctx.service.execute_query(qf.get_workflow_list(page_size=20), cache=False)
    pages = max(1, math.ceil(everything.total / 20))
    deep = min(500, pages)
    terms = [
        "mindfulness anxiety",
        "carbon pricing",
        "randomised trial",
        "privacy",
        "school meal programmes",
    ]
    return [
        (
            "list_page",
            "status + methodology filters, sorted by last activity",
            lambda i: qf.get_workflow_list(
                status=["running", "completed"],
                methodology=["systematic_review", "exploratory", "experimental"],
                sort="last_activity_at",
                page=1 + i % 3,
                page_size=20,
            ),
        ),
        (
            "deep_page",
            f"page {deep:,} of {pages:,} (page size 20)",
            lambda i: qf.get_workflow_list(page=deep, page_size=20),
        ),
        (
            "search",
            "full text, ranked, with snippets",
            lambda i: qf.search_workflows(terms[i % len(terms)]),
        ),
    ]


def _latencies(ctx: BenchContext, cases: list[Case], label: str) -> list[QueryLatency]:
    out = []
    for name, detail, make in cases:
        cold = []
        for i in range(ctx.sizes.cold_samples):
            query = make(i)
            t0 = time.perf_counter()
            ctx.service.execute_query(query, cache=False)
            cold.append((time.perf_counter() - t0) * 1000)
        query = make(0)
        ctx.service.execute_query(query)  # fills the cache
        warm = []
        for _ in range(ctx.sizes.warm_samples):
            t0 = time.perf_counter()
            ctx.service.execute_query(query)
            warm.append((time.perf_counter() - t0) * 1000)
        c50, c95, _ = timings(cold)
        w50, w95, _ = timings(warm)
        out.append(QueryLatency(name, detail, len(cold), c50, c95, w50, w95))
        ctx.say(f"query {name}{label}: cold p50 {c50:.2f} / p95 {c95:.2f} ms, warm p50 {w50:.3f} ms")
    return out


def measure_scaled_queries(ctx: BenchContext) -> tuple[int, list[QueryLatency]]:
    """The list, deep-page and search figures again with `sizes.scaled_workflows` rows in
    workflow_summary: the projected rows copied under new ids (same texts, statuses and dates),
    then VACUUM ANALYZE. Runs last: the copies have no events behind them."""
    target = ctx.sizes.scaled_workflows
    with ctx.engine.begin() as conn:
        have = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
        columns = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'workflow_summary' "
                    "AND table_schema = current_schema() AND is_generated = 'NEVER' ORDER BY ordinal_position"
                )
            )
        ]
        if have and target > have:
            copied = ", ".join("gen_random_uuid()" if c == "workflow_id" else c for c in columns)
            conn.execute(
                text(
                    f"INSERT INTO workflow_summary ({', '.join(columns)}) "
                    f"SELECT {copied} FROM workflow_summary, generate_series(1, :copies) LIMIT :needed"
                ),
                {"copies": math.ceil((target - have) / have), "needed": target - have},
            )
    vacuum(ctx)
    with ctx.engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
    ctx.service.query_bus.cache.invalidate("")
    return rows, _latencies(ctx, _list_cases(ctx), f" at {rows:,} workflows")


def measure_mixed_queries(ctx: BenchContext) -> MixedQueries:
    """A few threads reading what the pages read, through the cache, for a fixed time."""
    qf = QueryFactory()
    ids = ctx.workflow_ids[:5000] or [uuid.uuid4()]
    statuses = [None, ["running"], ["completed"], ["failed", "cancelled"], ["draft", "paused"]]
    sorts = ["created_at", "last_activity_at", "progress_pct", "title"]
    terms = [
        "anxiety",
        "carbon pricing",
        "randomised trial",
        "students",
        "privacy",
        "hospital readmissions",
        "cash transfers",
        "peer support",
        "air quality",
        "model accuracy",
    ]

    def pick(rng: random.Random) -> Query:
        # What the pages ask for, skewed as people are: a few workflows and the first pages are
        # read far more often than the rest.
        r = rng.random()
        if r < 0.4:
            return qf.get_workflow(ids[int(len(ids) * rng.random() ** 3)])
        if r < 0.7:
            return qf.get_workflow_list(
                status=rng.choice(statuses),
                sort=rng.choice(sorts),
                page=1 + int(10 * rng.random() ** 2),
                page_size=20,
            )
        if r < 0.85:
            return qf.search_workflows(rng.choice(terms))
        return qf.get_statistics() if r < 0.95 else qf.get_overview()

    before = ctx.service.query_bus.cache.snapshot()
    counts = [0] * ctx.sizes.mixed_threads
    stop_at = time.perf_counter() + ctx.sizes.mixed_seconds

    def reader(i: int) -> None:
        rng = random.Random(i)
        while time.perf_counter() < stop_at:
            ctx.service.execute_query(pick(rng))
            counts[i] += 1

    began = time.perf_counter()
    threads = [
        threading.Thread(target=reader, args=(i,), daemon=True) for i in range(ctx.sizes.mixed_threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    after = ctx.service.query_bus.cache.snapshot()
    hits, misses = after.hits - before.hits, after.misses - before.misses
    total = sum(counts)
    figure = MixedQueries(
        ctx.sizes.mixed_threads,
        total,
        seconds,
        total / seconds,
        hits / (hits + misses) if hits + misses else 0.0,
    )
    ctx.say(f"mixed queries: {figure.per_second:,.0f}/s (cache hit rate {figure.cache_hit_rate:.0%})")
    return figure
