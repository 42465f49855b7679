"""The projections' figures: appending a log of generated workflows, the catch-up of every
projection over it, a rebuild of each, the statistics views' refresh, and the lag while a steady
command load runs."""

from __future__ import annotations

import contextlib
import queue
import time
from typing import Any

from sqlalchemy import text

from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import CQRSError
from cqrs_core.tools.bench.harness import BENCH_SEED, BenchContext, load_average, timings
from cqrs_core.tools.bench.report import CatchUp, LagUnderLoad


def append_events(ctx: BenchContext) -> tuple[int, int, float]:
    """Append about `sizes.events` events of generated workflows straight through
    EventStore.append: one append per workflow (its whole lifecycle), many per transaction.
    The aggregate decides every event, exactly as the command bus would. Returns (events,
    workflows, seconds); the workflows' ids go to `ctx.workflow_ids`."""
    from cqrs_core.domain.events import stream_id_for
    from cqrs_core.domain.workflow import ResearchWorkflow
    from cqrs_core.eventlog.store import EventMetadata, NewEvent
    from cqrs_core.tools.workload.plans import WorkloadGenerator
    from cqrs_core.write.handlers import decide

    generator = WorkloadGenerator(BENCH_SEED, days=365, max_task_attempts=ctx.settings.max_task_attempts)
    store = ctx.service.event_store
    appended = workflows = 0
    began = time.perf_counter()
    while appended < ctx.sizes.events:
        with ctx.engine.begin() as conn:
            in_batch = 0
            while in_batch < 5000 and appended < ctx.sizes.events:
                plan = generator.workflow()
                wf = ResearchWorkflow(str(plan.workflow_id))
                decided = []
                for cmd in plan.commands:
                    for event in decide(wf, cmd, ctx.settings):
                        wf.apply(event)
                        decided.append(NewEvent(event.event_type, event.to_payload(), event.schema_version))
                first = plan.commands[0]
                store.append(
                    stream_id_for(str(plan.workflow_id)),
                    0,
                    decided,
                    EventMetadata(
                        actor=plan.owner,
                        command_id=first.command_id,
                        correlation_id=first.correlation_id,
                        occurred_at=first.occurred_at,
                    ),
                    conn=conn,
                )
                ctx.workflow_ids.append(plan.workflow_id)
                appended += len(decided)
                in_batch += len(decided)
                workflows += 1
    return appended, workflows, time.perf_counter() - began


def measure_catch_up(ctx: BenchContext, manager: Any) -> CatchUp:
    """Append the log, then time every projection catching up over it from zero."""
    appended, workflows, append_seconds = append_events(ctx)
    ctx.say(f"appended {appended:,} events ({workflows:,} workflows) in {append_seconds:.1f} s")
    head = ctx.service.event_store.head()
    began = time.perf_counter()
    manager.catch_up()
    seconds = time.perf_counter() - began
    _check_read_models(ctx, manager, head)
    figure = CatchUp(head, workflows, append_seconds, appended / append_seconds, seconds, head / seconds)
    ctx.say(f"catch-up of all projections over {head:,} events: {figure.events_per_second:,.0f} events/s")
    return figure


def _check_read_models(ctx: BenchContext, manager: Any, head: int) -> None:
    """A fast catch-up that skipped events would be a wrong figure: say so in the report."""
    with ctx.engine.connect() as conn:
        listed = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
        streams = conn.execute(text("SELECT count(DISTINCT stream_id) FROM events")).scalar_one()
    for s in manager.status():
        if s.events_applied != head or s.lag_events or s.parked:
            ctx.notes.append(
                f"{s.name} applied {s.events_applied:,} of {head:,} events "
                f"({s.lag_events:,} still pending, {s.parked:,} parked, state {s.state})"
            )
    if listed != streams:
        ctx.notes.append(f"workflow_summary lists {listed:,} of the {streams:,} workflows in the log")
    for note in ctx.notes:
        ctx.say(f"warning: {note}")


def measure_rebuilds(ctx: BenchContext, manager: Any) -> dict[str, float]:
    """Seconds to rebuild each projection from the whole log."""
    from cqrs_core.projections import PROJECTION_NAMES

    out = {}
    for name in PROJECTION_NAMES:
        began = time.perf_counter()
        result = manager.rebuild(name)
        out[name] = time.perf_counter() - began
        if not result.finished:
            raise CQRSError(f"The rebuild of {name} did not finish.")
        ctx.say(f"rebuild {name}: {out[name]:.2f} s")
    return out


def measure_view_refresh(ctx: BenchContext, manager: Any) -> dict[str, float]:
    """Seconds to refresh each statistics view."""
    refreshed = {r.view_name: (r.duration_ms or 0.0) / 1000 for r in manager.refresh_views()}
    ctx.say("view refresh: " + ", ".join(f"{v} {s:.2f} s" for v, s in refreshed.items()))
    return refreshed


def measure_lag_under_load(ctx: BenchContext, manager: Any) -> LagUnderLoad:
    """Steady commands at a fixed rate while a ProjectionRuntime runs the projections;
    the worst projection's lag (age of its oldest unapplied event) sampled every 100 ms.

    The load comes from a separate process, as users' commands come from the app's processes:
    sent from this one, its threads would compete with the projections for the GIL and the
    figure would measure that contention rather than the projections."""
    import multiprocessing

    from cqrs_core.infra.processes import spawning_without_main
    from cqrs_core.projections.engine.runtime import ProjectionRuntime

    # The runtime takes over the manager (and the projections' advisory locks it holds).
    runtime = ProjectionRuntime(ctx.engine, ctx.settings, manager=manager)
    runtime.start()
    samples: list[float] = []
    mp = multiprocessing.get_context("spawn")
    results, go = mp.Queue(), mp.Event()
    loader = mp.Process(
        target=_load_process,
        name="bench-load",
        daemon=True,
        args=(
            ctx.traffic_url,
            ctx.url if ctx.pooled_url else None,
            ctx.settings,
            ctx.sizes.lag_rate,
            ctx.sizes.lag_seconds,
            ctx.sizes.load_threads,
            BENCH_SEED + 1,
            results,
            go,
        ),
    )
    with spawning_without_main():
        loader.start()
    report: Any = None
    try:
        deadline = time.monotonic() + 30
        while max(s.lag_events for s in manager.status()) and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = results.get(timeout=120)  # the child has built its service and opened its pool
        if ready != "ready":
            raise CQRSError(f"The load process failed to start: {ready}")
        go.set()
        while report is None:
            tick = time.perf_counter()
            samples.append(max(s.lag_seconds for s in manager.status()) * 1000)
            with contextlib.suppress(queue.Empty):
                report = results.get(timeout=max(0.0, 0.1 - (time.perf_counter() - tick)))
            if report is None and not loader.is_alive() and results.empty():
                raise CQRSError("The load process ended without a report.")
    finally:
        go.set()
        loader.join(timeout=30)
        if loader.is_alive():
            loader.kill()
        runtime.stop()
    if isinstance(report, str):
        raise CQRSError(f"The command load failed: {report}")
    p50, p95, _ = timings(samples)
    load = load_average()
    figure = LagUnderLoad(
        ctx.sizes.lag_rate,
        report.achieved_rate,
        report.elapsed_seconds,
        len(samples),
        p50,
        p95,
        max(samples, default=0.0),
        report.p99_ms,
    )
    ctx.say(
        f"lag under {figure.achieved_rate:,.0f} commands/s: p95 {p95:.0f} ms, max {figure.max_ms:.0f} ms "
        f"(load average {load:g})"
    )
    return figure


def _load_process(
    url: str,
    direct_url: str | None,
    settings: Settings,
    rate: float,
    seconds: float,
    threads: int,
    seed: int,
    results: Any,
    go: Any,
) -> None:
    """The bench's command load, in a process of its own: build a service, say "ready", wait for
    `go`, run the steady load and send back its LoadReport (or one line saying what failed).
    `direct_url`: `url` is a pooler's, and this one reaches the server itself."""
    from cqrs_core.tools.workload.runners import run_steady_load, traffic_service

    try:
        service = traffic_service(settings, url, pool_size=threads + 2, direct_url=direct_url)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(f"{type(exc).__name__}: {exc}")
        return
    try:
        results.put("ready")
        go.wait()
        results.put(run_steady_load(service, rate=rate, duration=seconds, threads=threads, seed=seed))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(f"{type(exc).__name__}: {exc}")
    finally:
        service.close()
