"""`cqrs-console bench-viewers`: what a team watching the console costs, with real browsers.

The run, in order (each step's figures are reported apart):

1. a scratch database (a temporary embedded server), `workflows` workflows seeded through the
   command path, and the app served as `make run` serves it (`cqrs-console serve`, sign-in off,
   on a free loopback port); or, with `url`, an app already running on this machine;
2. one first visit (it opens the app's runtime), then a wait until the projections have caught up;
3. a steady command load from a separate process, through the service API the pages use, from
   here to the end; its latency is measured at that client, phase by phase;
4. *baseline*: 0 tabs, a few seconds, for the app's CPU without viewers;
   *alone*: `probes` new viewers, one at a time, with no other tab open: what one visit costs
   (and where its time goes, stage by stage), to tell the cost of a visit from that of the crowd;
5. *opening*: `viewers` tabs opened one every `open_interval` seconds, each in its own browser
   context, the pages in turn; until every tab shows its data (or gives up);
6. *window*: `seconds` seconds with every tab open and idle (their live fragments refreshing);
7. *probes*: `probes` new viewers, one at a time, each closed once it shows its data: the time
   to data of a new viewer while `viewers` are open. They come after the window, not during it,
   so that the window's CPU is that of idle tabs only.

CPU is measured per process group (`viewer_processes.CpuMeter`): the app (the served process and
any child), PostgreSQL (the server of the database, apart), Chromium (with the Playwright driver,
apart), the load process and this process. Lag samples skipped are counted from `lag_samples`: a
gap between a projection's samples longer than 1.5 sampling intervals.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, text

from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import migrate, runtime_connection
from cqrs_core.infra.metrics import percentile
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.read.queries import QueryFactory
from cqrs_core.service import CQRSService
from cqrs_core.tools import viewer_processes
from cqrs_core.tools.bench import scratch_database
from cqrs_core.tools.viewer_browser import (
    CHROMIUM,
    DATA_MARKERS,
    PAGES,
    STAGES,
    BenchProblem,
    Viewer,
    Viewers,
    browser_problem,
    chromium_viewers,
)
from cqrs_core.tools.viewer_report import (
    Commands,
    Cpu,
    LagSamples,
    Phase,
    TimeToData,
    ViewerBenchReport,
)

SEED = 20_240_614  # the same workflows every run
VIEWER_TIMEOUT = 120.0  # s: a viewer that has not shown its data by then counts as timed out
CATCH_UP_TIMEOUT = 900.0
PROBING_SECONDS = 240.0  # no new probe after this long: ten probes timing out would take 20 minutes


@dataclass(frozen=True)
class Plan:
    viewers: int = 25
    workflows: int = 10_000
    rate: float = 50.0
    seconds: float = 60.0
    open_interval: float = 0.5
    probes: int = 10
    quick: bool = False
    url: str | None = None  # an app already running on this machine
    database_url: str | None = None  # with `url`: the owner URL of that app's database
    browser_cpus: frozenset[int] | None = None
    chromium: Path = CHROMIUM

    @property
    def baseline_seconds(self) -> float:
        return min(20.0, max(5.0, self.seconds / 3))


QUICK = Plan(viewers=3, workflows=200, seconds=10.0, probes=3, quick=True)


# ---------------------------------------------------------------- running it


def run_viewer_bench(
    plan: Plan, *, log: TextIO | None = None, settings: Settings | None = None
) -> ViewerBenchReport:
    """Run the benchmark described in the module docstring and return its report.
    Raises BenchProblem (one line) for what the person running it has to fix."""
    problem = browser_problem(plan.chromium)
    if problem:
        raise BenchProblem(problem)
    say = _say(log)
    started = time.perf_counter()
    base = settings or get_settings()
    load_average = round(os.getloadavg()[0], 2)
    with contextlib.ExitStack() as stack:
        work_dir = Path(tempfile.mkdtemp(prefix="cqrs-bench-viewers-"))
        stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
        if plan.url is None:
            owner_url, _ = stack.enter_context(scratch_database(None, say))
            # The database comes from here, the tuning knobs (intervals, pools) from the environment.
            settings = base.model_copy(
                update={"database_url": owner_url, "read_database_url": None, "direct_database_url": None}
            )
        else:
            owner_url = plan.database_url or ""
            settings = base
        migrate(settings.direct_database_url or owner_url)  # never through a pooler
        url, role = runtime_connection(settings, owner_url)
        service = viewer_processes.app_service(settings, url, role, pool=4)
        stack.callback(service.close)
        if plan.url is None:
            _seed(service, plan.workflows, say)
            base_url, app_root = stack.enter_context(viewer_processes.served_app(owner_url, work_dir, say))
        else:
            base_url, app_root = viewer_processes.running_app(plan.url)
        postmaster = viewer_processes.postmaster_of(_scalar(service.engine, "SELECT pg_backend_pid()"))
        own = viewer_processes.process(os.getpid())
        load = stack.enter_context(viewer_processes.CommandLoad(settings, url, role, plan.rate))
        load_proc = viewer_processes.process(load.pid)
        groups: dict[str, Callable[[], list[Any]]] = {
            "app": lambda: viewer_processes.tree(app_root, viewer_processes.SERVER_NAMES),
            "postgres": lambda: viewer_processes.tree(postmaster),
            "browser": lambda: (
                viewer_processes.descendants_named(own, viewer_processes.BROWSER_NAMES) if own else []
            ),
            "load": lambda: viewer_processes.tree(load_proc),
            "bench": lambda: [own] if own else [],
        }
        meter = stack.enter_context(viewer_processes.CpuMeter(groups))
        viewers = stack.enter_context(chromium_viewers(base_url, plan.chromium, set(plan.browser_cpus or ())))
        run = _Run(plan, settings, service, load, meter, viewers, say, postmaster is not None)

        first_visit = run.first_visit()
        catch_up = run.wait_for_projections()
        workflows = _scalar(service.engine, "SELECT count(*) FROM workflow_summary")
        say(f"projections caught up in {catch_up:.1f} s; starting {plan.rate:g} commands/s")
        phases, opened, alone, probes = run.phases()
        processes = {name: sorted(pids) for name, pids in meter.seen_pids.items()}
    saturated, notes = _browser_notes(plan, phases)
    if first_visit is None:
        notes.append(f"the first visit did not show data within {VIEWER_TIMEOUT:.0f} s")
    span = opened[-1].opened_at - opened[0].opened_at if opened else 0.0
    if span > 1.5 * (plan.viewers - 1) * plan.open_interval + 1:
        notes.append(
            f"opening the {plan.viewers} tabs took {span:.1f} s instead of "
            f"{(plan.viewers - 1) * plan.open_interval:.1f} s: the browser was slow to open them"
        )
    for label, ran in (("probes", probes), ("probes alone", alone)):
        if len(ran) < plan.probes:
            notes.append(
                f"only {len(ran)} of {plan.probes} {label} ran: no new probe is opened after "
                f"{PROBING_SECONDS:.0f} s of probing"
            )
    return ViewerBenchReport(
        mode="quick" if plan.quick else "full",
        plan={
            **{
                k: v for k, v in asdict(plan).items() if k not in ("database_url", "chromium", "browser_cpus")
            },
            "browser_cpus": sorted(plan.browser_cpus) if plan.browser_cpus else None,
            "baseline_seconds": plan.baseline_seconds,
            "mix": list(PAGES),
        },
        machine={
            "cpus": os.cpu_count() or 0,
            "load_average": load_average,
            "python": platform.python_version(),
            "chromium": str(plan.chromium),
        },
        app={
            "url": base_url,
            "started_by_bench": plan.url is None,
            "pid": app_root.pid if app_root else None,
            "postgres_pid": postmaster.pid if postmaster else None,
        },
        workflows=int(workflows),
        first_visit_seconds=first_visit,
        catch_up_seconds=catch_up,
        viewers=_time_to_data(opened, plan.viewers),
        probes=_time_to_data(probes, plan.probes),
        alone=_time_to_data(alone, plan.probes),
        phases=phases,
        browser_saturated=saturated,
        data_markers={page: said for page, (said, _check) in DATA_MARKERS.items()},
        processes=processes,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


class _Run:
    """The measured part: the phases, with the load, the meter and the browser already running."""

    def __init__(
        self,
        plan: Plan,
        settings: Settings,
        service: CQRSService,
        load: viewer_processes.CommandLoad,
        meter: viewer_processes.CpuMeter,
        viewers: Viewers,
        say: Callable[[str], None],
        local_database: bool,
    ) -> None:
        self.plan, self.settings, self.service = plan, settings, service
        self.load, self.meter, self.viewers, self.say = load, meter, viewers, say
        self.local_database = local_database

    def first_visit(self) -> float | None:
        """One Overview viewer before anything is measured: the first session opens the app's
        runtime (database, migrations, projections)."""
        viewer = self.viewers.open("Overview")
        self.viewers.wait_for_data([viewer], VIEWER_TIMEOUT)
        viewer.close()
        self.say(
            "first visit: "
            + (f"data in {viewer.ready_seconds:.1f} s" if viewer.ready_seconds is not None else "no data")
        )
        return viewer.ready_seconds

    def wait_for_projections(self) -> float:
        started = time.monotonic()
        query = QueryFactory().get_projection_status()
        while True:
            statuses = self.service.execute_query(query, cache=False)
            if statuses and all(s.lag_events == 0 for s in statuses):
                return time.monotonic() - started
            if time.monotonic() - started > CATCH_UP_TIMEOUT:
                behind = max(s.lag_events for s in statuses) if statuses else 0
                raise BenchProblem(
                    f"The projections were still {behind:,} events behind after {CATCH_UP_TIMEOUT:.0f} s; "
                    "is a projection runner up (CQRS_RUN_PROJECTIONS, `cqrs-console worker`)?"
                )
            time.sleep(0.5)

    def phases(self) -> tuple[list[Phase], list[Viewer], list[Viewer], list[Viewer]]:
        plan = self.plan
        self.say(f"baseline: 0 tabs for {plan.baseline_seconds:g} s")
        baseline = self._phase("baseline", 0, lambda: time.sleep(plan.baseline_seconds))
        alone: list[Viewer] = []
        self.say(f"alone: {plan.probes} new viewers one at a time, no other tab open")
        by_itself = self._phase("alone", 0, lambda: self._probe(alone))

        opened: list[Viewer] = []

        def open_all() -> None:
            began = time.monotonic()
            for i in range(plan.viewers):
                pause = began + i * plan.open_interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                opened.append(self.viewers.open(PAGES[i % len(PAGES)]))
            self.viewers.wait_for_data(opened, VIEWER_TIMEOUT)

        self.say(f"opening {plan.viewers} viewers, one every {plan.open_interval:g} s")
        opening = self._phase("opening", plan.viewers, open_all)
        shown = sum(v.ready_seconds is not None for v in opened)
        self.say(f"{shown} of {plan.viewers} viewers show their data; {plan.seconds:g} s with every tab idle")
        window = self._phase("window", plan.viewers, lambda: time.sleep(plan.seconds))

        probes: list[Viewer] = []
        self.say(f"probing: {plan.probes} new viewers one at a time while {plan.viewers} are open")
        probing = self._phase("probes", plan.viewers, lambda: self._probe(probes))
        return [baseline, by_itself, opening, window, probing], opened, alone, probes

    def _probe(self, into: list[Viewer]) -> None:
        """`probes` new viewers, the pages in turn, one at a time: each is closed once it shows
        its data (or gives up) before the next opens."""
        deadline = time.monotonic() + PROBING_SECONDS
        for i in range(self.plan.probes):
            if time.monotonic() > deadline:
                break  # the probes have taken too long: report those that ran
            viewer = self.viewers.open(PAGES[i % len(PAGES)])
            into.append(viewer)
            self.viewers.wait_for_data([viewer], VIEWER_TIMEOUT)
            viewer.close()

    def _phase(self, name: str, tabs: int, body: Callable[[], None]) -> Phase:
        self.load.begin()
        start, db_start = self.meter.mark(), self._db_clock()
        body()
        end, db_end = self.meter.mark(), self._db_clock()
        sent = self.load.end()
        commands = Commands(
            target_rate=sent.target_rate,
            achieved_rate=sent.achieved_rate,
            commands=sent.commands,
            errors=sum(sent.errors.values()),
            p50_ms=sent.p50_ms,
            p95_ms=sent.p95_ms,
            p99_ms=sent.p99_ms,
            max_ms=sent.max_ms,
        )
        seconds, usage, machine = viewer_processes.CpuMeter.usage(start, end)
        measured = sum(usage.values())
        cpu = Cpu(
            seconds=seconds,
            app=usage["app"],
            postgres=usage["postgres"] if self.local_database else None,
            browser=usage["browser"],
            load=usage["load"],
            bench=usage["bench"],
            machine=machine,
            other=max(0.0, machine - measured),
        )
        lag = _lag_samples(self.service.engine, self.settings.lag_sample_seconds, db_start, db_end)
        return Phase(name, tabs, cpu, lag, commands)

    def _db_clock(self) -> datetime:
        return _scalar(self.service.engine, "SELECT clock_timestamp()")


def _say(log: TextIO | None) -> Callable[[str], None]:
    def say(line: str) -> None:
        if log is not None:
            log.write(f"bench-viewers: {line}\n")
            log.flush()

    return say


def _scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def _seed(service: CQRSService, workflows: int, say: Callable[[str], None]) -> None:
    from cqrs_core.tools.workload import runners

    say(f"seeding {workflows:,} workflows through the command path")
    report = runners.seed(service, workflows, seed=SEED, threads=2)
    if report.failed_workflows:
        raise BenchProblem(f"The seed failed: {report.failed_workflows:,} workflows were refused.")
    say(f"seeded {report.events:,} events in {report.seconds:.1f} s")


def _time_to_data(viewers: list[Viewer], asked: int) -> TimeToData:
    """The viewers' times to data. One that showed its data after VIEWER_TIMEOUT (the page
    measures it; the browser may answer late) counts as timed out, at VIEWER_TIMEOUT."""

    def in_time(v: Viewer) -> bool:
        return v.ready_seconds is not None and v.ready_seconds <= VIEWER_TIMEOUT

    seconds = sorted(min(v.ready_seconds or VIEWER_TIMEOUT, VIEWER_TIMEOUT) for v in viewers)
    by_page: dict[str, list[float | None]] = {page: [] for page in PAGES}
    for v in viewers:
        by_page[v.page_name].append(None if v.ready_seconds is None else round(v.ready_seconds, 3))
    late = [v for v in viewers if not in_time(v)]
    seen = Counter(v.seen if v.ready_seconds is None else "data after the timeout" for v in late)
    shown = [v for v in viewers if in_time(v) and v.stages is not None]
    stages = {
        stage: percentile(sorted(v.stages[stage] for v in shown if v.stages and stage in v.stages), 0.5)
        for stage in STAGES
        if any(v.stages and stage in v.stages for v in shown)
    }
    if shown:
        stages["data"] = percentile(sorted(v.ready_seconds or 0.0 for v in shown), 0.5)
    return TimeToData(
        asked=asked,
        viewers=len(viewers),
        shown=len(viewers) - len(late),
        timed_out=len(late),
        timed_out_seen=dict(seen),
        timed_out_text={v.page_name: v.main_text for v in reversed(late) if v.main_text is not None},
        errors=sum(v.error is not None for v in viewers),
        timeout_seconds=VIEWER_TIMEOUT,
        p50_s=percentile(seconds, 0.5),
        p95_s=percentile(seconds, 0.95),
        max_s=seconds[-1] if seconds else 0.0,
        by_page={page: values for page, values in by_page.items() if values},
        stages_p50_s={stage: round(seconds, 3) for stage, seconds in stages.items()},
    )


def _lag_samples(engine: Engine, interval: float, start: datetime, end: datetime) -> LagSamples:
    """Samples each projection has between `start` and `end` (database clock), and how many are
    missing: every gap longer than 1.5 intervals (from the sample before `start`, or `start`, to
    `end`) lacks round(gap / interval) - 1 samples, at least one."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT projection, sampled_at FROM lag_samples "
                "WHERE projection = ANY(CAST(:names AS text[])) AND sampled_at > :since AND sampled_at <= :end "
                "ORDER BY projection, sampled_at"
            ),
            {"names": list(PROJECTION_NAMES), "since": start - timedelta(seconds=10 * interval), "end": end},
        ).all()
    seconds = (end - start).total_seconds()
    skipped: dict[str, int] = {}
    gaps = recorded = 0
    for name in PROJECTION_NAMES:
        times = [r.sampled_at for r in rows if r.projection == name]
        before = [t for t in times if t <= start]
        inside = [t for t in times if t > start]
        recorded += len(inside)
        points = [before[-1] if before else start, *inside, end]
        missing = 0
        for a, b in zip(points, points[1:], strict=False):
            gap = (b - a).total_seconds()
            if gap > 1.5 * interval:
                gaps += 1
                missing += max(1, round(gap / interval) - 1)
        skipped[name] = missing
    return LagSamples(
        interval_seconds=interval,
        seconds=seconds,
        expected=round(seconds / interval) * len(PROJECTION_NAMES),
        recorded=recorded,
        gaps=gaps,
        skipped=sum(skipped.values()),
        skipped_by_projection=skipped,
    )


# ---------------------------------------------------------------- the browser's share


def _browser_notes(plan: Plan, phases: list[Phase]) -> tuple[bool, list[str]]:
    """Whether Chromium saturated the cores while tabs were open, and what to say about the
    browser's and other programs' share of the machine."""
    cores = len(plan.browser_cpus) if plan.browser_cpus else len(os.sched_getaffinity(0))
    machine_cores = os.cpu_count() or 1
    with_tabs = [p for p in phases if p.tabs]
    full = [p for p in with_tabs if p.cpu.machine >= 90 * machine_cores]
    # Chromium filled the cores it may use, or took a real share of a machine that was full.
    heavy = [p for p in with_tabs if p.cpu.browser >= 90 * cores or (p in full and p.cpu.browser >= 25)]
    notes = []
    if plan.browser_cpus:
        notes.append(f"Chromium was pinned to CPU {', '.join(map(str, sorted(plan.browser_cpus)))}")
    if heavy:
        advice = (
            "" if plan.browser_cpus else "; pin it with --browser-cpus so that the figures measure the app"
        )
        shares = ", ".join(f"{p.name} {p.cpu.browser:.0f} %" for p in heavy)
        notes.append(
            f"Chromium saturated the cores ({shares} of one core, the machine at "
            f"{max(p.cpu.machine for p in heavy):.0f} % of {machine_cores} cores){advice}"
        )
    elif full:
        notes.append(f"the machine was saturated ({', '.join(p.name for p in full)}) by other work")
    window = next(p for p in phases if p.name == "window")
    if window.cpu.other >= 25:
        notes.append(
            f"other programs on this machine took {window.cpu.other:.0f} % of one core during the window "
            "(their load skews every figure)"
        )
    return bool(heavy), notes
