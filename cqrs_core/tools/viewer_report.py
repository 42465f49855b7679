"""The report of `bench-viewers`: its figures per phase, and the same as plain text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# The goals of issue 14, printed next to the figures.
GOALS = {
    "time_to_data": "p95 ≤ 2 s",
    "app_cpu": "≤ 25 % of one core",
    "lag": "none skipped",
    "commands": "p99 ≤ 50 ms",
}


@dataclass(frozen=True)
class TimeToData:
    asked: int  # viewers the plan asked for (probes stop early when they take too long)
    viewers: int  # viewers opened
    shown: int
    timed_out: int  # no data within timeout_seconds; counted at timeout_seconds in the percentiles
    timed_out_seen: dict[str, int]  # what those showed when they gave up (nothing, script running, …)
    timed_out_text: dict[str, str]  # per page, the start of what one of them showed
    errors: int  # showed an exception
    timeout_seconds: float
    p50_s: float
    p95_s: float
    max_s: float
    by_page: dict[str, list[float | None]]  # each viewer's seconds as measured, None: no data at all
    # Median seconds from the navigation's start to each stage of the visit (viewer_browser.STAGES)
    # and to the data, over the viewers that showed their data: where a new viewer's time goes.
    stages_p50_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Cpu:
    """% of one core, averaged over `seconds`."""

    seconds: float
    app: float
    postgres: float | None  # None: the database server is not on this machine
    browser: float
    load: float
    bench: float
    machine: float  # every process on the machine
    other: float  # the machine minus the groups above: other work sharing the cores


@dataclass(frozen=True)
class LagSamples:
    interval_seconds: float
    seconds: float
    expected: int  # over every projection
    recorded: int
    gaps: int  # longer than 1.5 intervals
    skipped: int  # samples those gaps lack
    skipped_by_projection: dict[str, int]


@dataclass(frozen=True)
class Commands:
    target_rate: float
    achieved_rate: float
    commands: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Phase:
    name: str  # baseline | alone | opening | window | probes
    tabs: int  # tabs open (alone, probes: besides the probe)
    cpu: Cpu
    lag: LagSamples
    commands: Commands


@dataclass(frozen=True)
class ViewerBenchReport:
    mode: str
    plan: dict[str, Any]
    machine: dict[str, Any]
    app: dict[str, Any]
    workflows: int  # in the read model when the measured phases began
    first_visit_seconds: float | None
    catch_up_seconds: float
    viewers: TimeToData
    probes: TimeToData  # new viewers while the others are open
    alone: TimeToData  # the same new viewers with no other tab open: what one visit costs
    phases: list[Phase]
    browser_saturated: bool
    data_markers: dict[str, str]
    processes: dict[str, list[int]]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViewerBenchReport:
        """The report back from `to_dict()` (the --json file), e.g. to print or compare runs."""
        phases = [
            Phase(
                p["name"],
                p["tabs"],
                Cpu(**p["cpu"]),
                LagSamples(**p["lag"]),
                Commands(**p["commands"]),
            )
            for p in d["phases"]
        ]
        times = {key: TimeToData(**d[key]) for key in ("viewers", "probes", "alone")}
        return cls(**{**d, **times, "phases": phases})

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


# ---------------------------------------------------------------- printing


def _seconds(t: TimeToData) -> str:
    return f"p50 {t.p50_s:.1f} · p95 {t.p95_s:.1f} · max {t.max_s:.1f} s"


def _stages(t: TimeToData) -> str:
    if not t.stages_p50_s:
        return "no stage measured"
    return ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in t.stages_p50_s.items()) + " s"


def _shown(t: TimeToData) -> str:
    out = f"{t.shown} of {t.viewers} showed data"
    if t.timed_out:
        seen = ", ".join(f"{n} {what}" for what, n in sorted(t.timed_out_seen.items()))
        out += (
            f"; {t.timed_out} not within {t.timeout_seconds:.0f} s (counted as {t.timeout_seconds:.0f} s; "
            f"they showed: {seen})"
        )
    if t.errors:
        out += f"; {t.errors} showed an error"
    return out


def format_report(r: ViewerBenchReport) -> str:
    """The report as plain text: one line per figure, with the goal of issue 14 next to it."""
    n = r.plan["viewers"]
    base, opening, window, probes = (r.phase(name) for name in ("baseline", "opening", "window", "probes"))

    def cpu_line(label: str, value: Callable[[Cpu], float | None], goal: str = "") -> tuple[str, ...]:
        v = value(window.cpu)
        b = value(base.cpu)
        if v is None or b is None:
            return (label, "not measured", "the database server is not on this machine", goal)
        return (
            label,
            f"{v:.0f} %",
            f"of one core, {n} tabs idle for {window.cpu.seconds:.0f} s; 0 tabs: {b:.0f} %; "
            f"opening: {value(opening.cpu) or 0:.0f} %; probing: {value(probes.cpu) or 0:.0f} %",
            goal,
        )

    def commands(p: Phase) -> str:
        c = p.commands
        return f"p50 {c.p50_ms:.1f} · p95 {c.p95_ms:.1f} · p99 {c.p99_ms:.1f} · max {c.max_ms:.0f} ms"

    rows = [
        (
            "new viewer, time to data",
            f"p95 {r.probes.p95_s:.1f} s",
            f"{_seconds(r.probes)} over {r.probes.viewers} probes "
            f"while {n} tabs are open; {_shown(r.probes)}",
            GOALS["time_to_data"],
        ),
        (
            "new viewer alone, time to data",
            f"p95 {r.alone.p95_s:.1f} s",
            f"{_seconds(r.alone)} over {r.alone.viewers} probes with no other tab open; {_shown(r.alone)}",
            "",
        ),
        (
            f"first {n} viewers, time to data",
            f"p95 {r.viewers.p95_s:.1f} s",
            f"{_seconds(r.viewers)}, opened one every {r.plan['open_interval']:g} s; {_shown(r.viewers)}",
            "",
        ),
        cpu_line("app CPU", lambda c: c.app, GOALS["app_cpu"]),
        cpu_line("PostgreSQL CPU", lambda c: c.postgres),
        cpu_line("Chromium CPU", lambda c: c.browser),
        (
            "lag samples skipped",
            f"{window.lag.skipped:,}",
            f"{n} tabs idle: {window.lag.recorded:,} of {window.lag.expected:,} "
            f"samples, {window.lag.gaps} gaps > 1.5 × {window.lag.interval_seconds:g} s; 0 tabs: {base.lag.skipped}; "
            f"opening: {opening.lag.skipped}; probing: {probes.lag.skipped}",
            GOALS["lag"],
        ),
        (
            "command latency",
            f"p99 {window.commands.p99_ms:.1f} ms",
            f"{commands(window)} with {n} tabs open, "
            f"{window.commands.achieved_rate:.1f} of {window.commands.target_rate:g}/s; 0 tabs: p99 "
            f"{base.commands.p99_ms:.1f} ms; opening: p99 {opening.commands.p99_ms:.1f} ms; probing: p99 "
            f"{probes.commands.p99_ms:.1f} ms",
            GOALS["commands"],
        ),
    ]
    errors = sum(p.commands.errors for p in r.phases)
    header = ("figure", "value", "goal", "detail")
    table = [(figure, value, goal, detail) for figure, value, detail, goal in rows]
    widths = [max(len(row[i]) for row in [*table, header]) for i in range(3)]
    lines = [
        f"cqrs-console bench-viewers ({r.mode}) — {r.seconds:.0f} s",
        f"machine: {r.machine['cpus']} CPUs, load average {r.machine['load_average']:g} at the start",
        f"app: {r.app['url']} ({'served by the bench, as `make run`' if r.app['started_by_bench'] else 'already running'}),"
        f" {r.workflows:,} workflows; first visit "
        + (f"{r.first_visit_seconds:.1f} s" if r.first_visit_seconds is not None else "showed no data")
        + f"; projections caught up in {r.catch_up_seconds:.1f} s",
        f"viewers: {n}, opened one every {r.plan['open_interval']:g} s, pages in turn: {', '.join(r.plan['mix'])}; "
        f"each in its own browser context; command load {r.plan['rate']:g}/s from a separate process",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  detail",
        "  ".join("-" * w for w in widths) + "  ------",
    ]
    for figure, value, goal, detail in table:
        lines.append(
            "  ".join(
                [figure.ljust(widths[0]), value.rjust(widths[1]), goal.ljust(widths[2]), detail]
            ).rstrip()
        )
    lines.append("")
    lines.append(f"stages of a new viewer (median s from the navigation): alone: {_stages(r.alone)}")
    lines.append(f"  with {n} tabs open: {_stages(r.probes)}")
    for page, values in r.probes.by_page.items():
        shown = [v for v in values if v is not None and v <= r.probes.timeout_seconds]
        lines.append(
            f"new {page} viewer: "
            + (", ".join(f"{v:.1f}" for v in shown) + " s" if shown else "no data")
            + (f" ({len(values) - len(shown)} timed out)" if len(shown) < len(values) else "")
        )
    lines.append("shows its data when: " + "; ".join(f"{p}: {said}" for p, said in r.data_markers.items()))
    if errors:
        lines.append(f"note: {errors:,} commands of the load were refused")
    lines.extend(f"note: {note}" for note in r.notes)
    return "\n".join(lines)
