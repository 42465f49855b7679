"""What the live cards show, computed once per refresh interval for every viewer of the process.

A live card (`st.fragment(run_every=…)`) runs in every open tab once per interval. What it shows
(the Overview's open alerts, numbers and activity, the health report, the projections' status,
the lag history, this process's metrics) is the same for everyone, so the process's `LiveBoard` (one per
runtime: `ui.live()`) computes each item at most once per interval, together with what the cards
draw from it: tables, chart data, chart specs. A session only reads the snapshot and emits
elements; what differs per person (permissions, buttons, widget state) stays in the page.

Intervals are slots of the board's clock: every reader in one slot gets the same snapshot, and a
card that ticks once per interval gets a new one on each tick. A reader may ask for a snapshot
started after a moment (`since`): a page load, or the session's own action, then never shows
older data, and the fresher snapshot serves everyone else too. Concurrent readers of a missing
snapshot wait for one computation (the query bus's `QueryCache`, which also bounds how many
snapshots are kept). A producer that fails gives an error snapshot for its slot: its readers show
the error, other items are not affected, and the next slot tries again.

Nothing here imports Streamlit: a producer runs on the thread of whichever session asked first.
The charts are Vega-Lite specs (`st.vega_lite_chart`), not Plotly figures: Streamlit keys a Plotly
chart by a hash of its figure, so new data unmounts and mounts it again on every refresh (the
chart fades and draws twice), while a Vega-Lite chart keeps its view and swaps the data in place,
drawn on a canvas (no WebGL context per chart). A spec holds no data and stays the same across
refreshes, so the view is kept. The labels in these charts are projection names, message types
and fixed words, never text people typed; Vega-Lite draws labels as text, not markup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]  # Streamlit's own table format (a dependency of it)
from cachetools import LRUCache

from cqrs_core.app.runtime import AppRuntime
from cqrs_core.infra.errors import CQRSError
from cqrs_core.infra.metrics import LatencySummary
from cqrs_core.ops.health import ComponentHealth, HealthReport, Status, replica_check, worst
from cqrs_core.projections.engine.manager import ProjectionStatus
from cqrs_core.read.queries import QueryFactory
from cqrs_core.read.query_cache import CacheEntry, QueryCache
from cqrs_core.read.results import AlertList, Overview
from cqrs_core.service import ServiceMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# The refresh interval of each live card, in seconds: its `run_every`, its caption, and the slot
# of the snapshots it reads.
OVERVIEW_SECONDS = 5
PROJECTIONS_SECONDS = 2
SYSTEM_SECONDS = 3
SCHEDULER_SECONDS = 5

RECENT_ACTIVITY = 12  # rows of the Overview's recent activity
OVERVIEW_ALERTS = 5  # open alerts listed on the Overview (the Alerts page has them all)

# Each refresh of a lag window reads the samples from this long before its newest one on (a
# sample can commit a little after a newer one), not the whole window again.
LAG_OVERLAP = timedelta(seconds=10)

# Lag trend: the samples of this last stretch give each projection's direction and apply rate.
TREND_MINUTES = 1.0
TREND_RATE_SAMPLES = 5  # the apply rate is the mean of this many newest samples
# Lag whose fitted change over the stretch is below this many events, or below the samples' own
# scatter around the fitted line (twice its standard deviation: a projection that applies in
# batches saws up and down), reads as flat.
TREND_FLAT_EVENTS = 10

# Lag chart: what people pick → (sample column, axis title).
LAG_MEASURES = {
    "Lag (events)": ("lag_events", "lag (events)"),
    "Lag (seconds)": ("lag_seconds", "lag (seconds)"),
    "Applied (events/s)": ("events_per_second", "applied (events per second)"),
}


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    """One item as computed for every reader of its slot: its value, or the error that stopped
    it (one sentence for people), and when it was taken."""

    value: T | None
    error: CQRSError | None
    taken_at: datetime  # wall clock (UTC), for people
    started: float  # the board's clock when the producer started, for `since`


# The tables below are Arrow tables, the form Streamlit sends: converted once per snapshot
# instead of once per viewer and refresh, and immutable, so every session can read them at once.


@dataclass(frozen=True)
class OpenAlerts:
    """The first few open alerts (`alert_summary` rows) and how many are open (counted up to the
    query's page size)."""

    alerts: list[dict[str, Any]]
    total: int

    @property
    def critical(self) -> int:
        return sum(a["severity"] == "critical" for a in self.alerts)


@dataclass(frozen=True)
class OverviewCard:
    overview: Overview
    activity: pa.Table  # when, who, what, workflow, details, workflow_id; newest first


class LagPoint(NamedTuple):
    """One lag sample as the trend reads it: seconds on any clock, lag, apply rate."""

    t: float
    lag_events: int
    events_per_second: float


@dataclass(frozen=True)
class LagTrend:
    """Where a projection's lag is heading, and when it will have caught up."""

    direction: Literal["rising", "falling", "flat", "unknown"]  # unknown: fewer than two samples
    lag_events: int
    events_per_second: float  # recent apply rate
    slope: float  # lag change, events per second (negative: falling)
    catch_up_seconds: float | None  # when behind and falling; None otherwise

    @property
    def sentence(self) -> str:
        """One line for people, e.g. "lag falling · catching up in ~40 s at 1,200 events/s"."""
        if self.direction == "unknown":
            return "trend: not enough lag samples yet"
        if self.lag_events <= 0:
            return f"caught up · lag {self.direction}"
        if self.events_per_second <= 0:
            return "not catching up: nothing applied recently"
        if self.direction == "rising":
            return f"not catching up: lag rising ({self.events_per_second:,.0f} events/s applied)"
        if self.direction == "flat" or self.catch_up_seconds is None:
            return f"not catching up: lag flat at {self.events_per_second:,.0f} events/s"
        return (
            f"lag falling · catching up in ~{duration(self.catch_up_seconds)} "
            f"at {self.events_per_second:,.0f} events/s"
        )


def lag_trend(points: list[LagPoint], lag_events: int | None = None) -> LagTrend:
    """The direction of the lag over `points` (oldest first) by a least-squares line, the recent
    apply rate (mean of the newest samples), and, when behind and falling, the seconds until the
    lag (`lag_events`, else the newest sample's) reaches zero at the rate it falls (what is
    applied less what arrives meanwhile). Pure."""
    if not points:
        return LagTrend("unknown", lag_events or 0, 0.0, 0.0, None)
    current = points[-1].lag_events if lag_events is None else lag_events
    recent = points[-TREND_RATE_SAMPLES:]
    rate = sum(p.events_per_second for p in recent) / len(recent)
    if len(points) < 2 or points[-1].t <= points[0].t:
        return LagTrend("unknown", current, rate, 0.0, None)
    n = len(points)
    mean_t = sum(p.t for p in points) / n
    mean_lag = sum(p.lag_events for p in points) / n
    var = sum((p.t - mean_t) ** 2 for p in points)
    slope = sum((p.t - mean_t) * (p.lag_events - mean_lag) for p in points) / var
    change = slope * (points[-1].t - points[0].t)
    scatter = (sum((p.lag_events - mean_lag - slope * (p.t - mean_t)) ** 2 for p in points) / n) ** 0.5
    flat_below = max(TREND_FLAT_EVENTS, 2 * scatter)
    direction: Literal["rising", "falling", "flat"] = (
        "flat" if abs(change) < flat_below else "rising" if slope > 0 else "falling"
    )
    eta = current / -slope if direction == "falling" and current > 0 and rate > 0 else None
    return LagTrend(direction, current, rate, slope, eta)


def duration(seconds: float) -> str:
    """A rough duration: "40 s", "3 min", "2 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


@dataclass(frozen=True)
class ProjectionsCard:
    statuses: list[ProjectionStatus]
    grid: pa.Table  # one row per projection, the Projections page's columns
    head: int
    largest_lag: ProjectionStatus | None
    parked: int
    running: int
    trends: dict[str, LagTrend]  # by projection; empty when the samples could not be read
    # One row per partition of the split projections (PARTITION_COLUMNS); None when none is split.
    partitions: pa.Table | None = None


@dataclass(frozen=True)
class HealthCard:
    report: HealthReport
    statuses: list[ProjectionStatus] | None  # None when they could not be read
    components: list[ComponentHealth]  # the report's, with one line per projection
    overall: Status
    table: pa.Table  # Component, Status, Detail


@dataclass(frozen=True)
class Chart:
    """A Vega-Lite chart: `data` for `st.vega_lite_chart(data, spec)`; `spec` is shared, never
    mutated, and the same for every refresh of the chart."""

    data: pa.Table
    spec: dict[str, Any]
    samples: int = 0
    newest: datetime | None = None


@dataclass(frozen=True)
class MetricsCard:
    metrics: ServiceMetrics
    commands_total: int
    queries_total: int
    commands: pa.Table | None  # latency table, None when nothing ran
    queries: pa.Table | None
    latency_chart: Chart | None
    errors: pa.Table | None  # by category, None when there were none
    cache: pa.Table
    refusals: pa.Table | None  # by actor, None when nobody was refused


@dataclass(frozen=True)
class JobTraces:
    """What the projection runner's jobs in another process left behind."""

    last_lag_sample: datetime | None
    last_view_refresh: datetime | None
    last_verification_pass: datetime | None = None


class LiveBoard:
    """The snapshots every session of one app process reads. Thread-safe."""

    def __init__(
        self, runtime: AppRuntime, *, clock: Callable[[], float] = time.monotonic, max_items: int = 256
    ) -> None:
        self.runtime = runtime
        self.now = clock
        self._snapshots = QueryCache(max_items)
        self._queries = QueryFactory()
        self._lag_windows: LRUCache = LRUCache(maxsize=32)  # (minutes, projection) → newest window
        self._lag_lock = threading.Lock()

    def snapshot(
        self, item: str, key: Hashable, every: float, produce: Callable[[], T], since: float = 0.0
    ) -> Snapshot[T]:
        """`produce()` as computed once for this slot of `every` seconds, for every reader of the
        same `item` and `key` (its parameters), and started at or after `since` (a time of
        `self.now`)."""
        slot = int(self.now() // every)

        def compute() -> CacheEntry:
            started, taken_at = self.now(), datetime.now(UTC)
            value: T | None = None
            error: CQRSError | None = None
            try:
                value = produce()
            except CQRSError as exc:
                error = exc
            except Exception:  # a bug: the traceback goes to the log once, readers see one sentence
                log.exception("live item %s %r failed", item, key)
                error = CQRSError("Something went wrong on our side; the server log has the details.")
            return CacheEntry(Snapshot(value, error, taken_at, started), ttl=every)

        entry, _hit = self._snapshots.get_or_compute(
            f"{item}:{key!r}@{slot}", compute, accept=lambda e: e.value.started >= since
        )
        return entry.value

    # ------------------------------------------------------------ the items

    def overview(self, since: float = 0.0, time_zone: str = "UTC") -> Snapshot[OverviewCard]:
        """The Overview's numbers and activity; "today" starts at midnight in `time_zone` (one
        snapshot per zone in use)."""
        return self.snapshot(
            "overview", (time_zone,), OVERVIEW_SECONDS, lambda: self._overview(time_zone), since
        )

    def open_alerts(self, since: float = 0.0) -> Snapshot[OpenAlerts]:
        """The open alerts the Overview lists first (critical first, newest raised first)."""
        return self.snapshot("open_alerts", (), OVERVIEW_SECONDS, self._open_alerts, since)

    def projections(self, since: float = 0.0) -> Snapshot[ProjectionsCard]:
        return self.snapshot("projections", (), PROJECTIONS_SECONDS, self._projections, since)

    def health(self, since: float = 0.0) -> Snapshot[HealthCard]:
        return self.snapshot("health", (), OVERVIEW_SECONDS, lambda: self._health(since), since)

    def lag_samples(
        self, minutes: float, projection: str | None = None, since: float = 0.0
    ) -> Snapshot[pd.DataFrame]:
        """The lag samples of the last `minutes` (of one projection, or all), oldest first."""
        return self.snapshot(
            "lag_samples",
            (minutes, projection),
            PROJECTIONS_SECONDS,
            lambda: self._lag_samples(minutes, projection),
            since,
        )

    def lag_chart(self, measure: str, minutes: int, since: float = 0.0) -> Snapshot[Chart]:
        """`measure` (a key of LAG_MEASURES) per projection over the last `minutes`."""
        return self.snapshot(
            "lag_chart",
            (measure, minutes),
            PROJECTIONS_SECONDS,
            lambda: self._lag_chart(measure, minutes, since),
            since,
        )

    def projection_lag_chart(self, projection: str, minutes: int, since: float = 0.0) -> Snapshot[Chart]:
        """One projection's lag in events over the last `minutes`, as an area."""
        return self.snapshot(
            "projection_lag_chart",
            (projection, minutes),
            PROJECTIONS_SECONDS,
            lambda: self._projection_lag_chart(projection, minutes, since),
            since,
        )

    def metrics(self, since: float = 0.0) -> Snapshot[MetricsCard]:
        return self.snapshot("metrics", (), SYSTEM_SECONDS, self._metrics, since)

    def job_traces(self, since: float = 0.0) -> Snapshot[JobTraces]:
        return self.snapshot("job_traces", (), SCHEDULER_SECONDS, self._job_traces, since)

    def replica(self, since: float = 0.0) -> Snapshot[ComponentHealth]:
        """The read replica's health line, its metrics the lag in bytes and seconds, whether replay
        is paused and where queries read (the runtime's service must have a replica)."""
        check = replica_check(self.runtime.service.replica)
        return self.snapshot("replica", (), SYSTEM_SECONDS, lambda: check(self.runtime.engine), since)

    def parked(self, since: float = 0.0) -> Snapshot[list[Any]]:
        """The parked events (status parked) of every projection."""
        return self.snapshot(
            "parked",
            (),
            PROJECTIONS_SECONDS,
            lambda: self._ask(self._queries.get_parked_events()),
            since,
        )

    # ------------------------------------------------------------ producers

    def _ask(self, query: Any) -> Any:
        # The board is the cache of what it shows: it asks the database once per slot, for
        # everyone, so it bypasses the query cache (whose own TTL would only add to the age)
        # and no one's query rate limit is charged.
        return self.runtime.service.execute_query(query, cache=False)

    def _overview(self, time_zone: str) -> OverviewCard:
        overview = self._ask(self._queries.get_overview(recent=RECENT_ACTIVITY, time_zone=time_zone))
        activity = arrow(
            [
                {
                    "when": a["occurred_at"],
                    "who": a["actor"],
                    "what": a["event_type"],
                    "workflow": a["title"],
                    "details": a["summary"],
                    "workflow_id": str(a["workflow_id"]),
                }
                for a in overview.recent_activity
            ],
            ["when", "who", "what", "workflow", "details", "workflow_id"],
        )
        return OverviewCard(overview, activity)

    def _open_alerts(self) -> OpenAlerts:
        listed: AlertList = self._ask(self._queries.get_alerts(recent=0))  # up to MAX_PAGE_SIZE open ones
        return OpenAlerts(listed.open[:OVERVIEW_ALERTS], len(listed.open))

    def _projections(self) -> ProjectionsCard:
        statuses: list[ProjectionStatus] = self._ask(self._queries.get_projection_status())
        grid = arrow(
            [
                {
                    "Projection": s.name,
                    "State": s.state,
                    "Position": s.position,
                    "Head": s.head,
                    "Lag (events)": s.lag_events,
                    "Lag (s)": round(s.lag_seconds, 1),
                    "Events/s": round(s.events_per_second, 1),
                    "Parked": s.parked,
                    "On failure": s.failure_policy,
                    "Last error": s.last_error or "",
                    "Runner": s.owner or "",
                }
                for s in statuses
            ],
            GRID_COLUMNS,
        )
        split = [
            {
                "Projection": s.name,
                "Partition": f"{p.partition + 1} of {p.partitions}",
                "Held by": p.owner or "nobody (free)",
                "Position": p.position,
                "Behind head": p.lag_events,
                "Applied": p.events_applied,
            }
            for s in statuses
            for p in s.partitions
        ]
        return ProjectionsCard(
            partitions=arrow(split, PARTITION_COLUMNS) if split else None,
            trends=self._trends(statuses),
            statuses=statuses,
            grid=grid,
            head=max((s.head for s in statuses), default=0),
            largest_lag=max(statuses, key=lambda s: s.lag_seconds, default=None),
            parked=sum(s.parked for s in statuses),
            running=sum(s.state in ("running", "catching_up") for s in statuses),
        )

    def _trends(self, statuses: list[ProjectionStatus]) -> dict[str, LagTrend]:
        samples = self.lag_samples(TREND_MINUTES)
        if samples.value is None:  # the card still shows; the trend lines say nothing
            return {}
        frame = samples.value
        seconds = (frame["time"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        points: dict[str, list[LagPoint]] = {s.name: [] for s in statuses}
        for name, t, lag, rate in zip(
            frame["projection"], seconds, frame["lag_events"], frame["events_per_second"], strict=True
        ):
            if name in points:
                points[name].append(LagPoint(float(t), int(lag), float(rate)))
        return {s.name: lag_trend(points[s.name], s.lag_events) for s in statuses}

    def _health(self, since: float) -> HealthCard:
        report = self.runtime.health()
        projections = self.projections(since)
        statuses = projections.value.statuses if projections.value is not None else None
        components = list(report.components)
        if statuses is not None:
            threshold = self.runtime.settings.stale_lag_threshold_seconds
            at = next((i for i, c in enumerate(components) if c.name == "projections"), len(components))
            components[at : at + 1] = [projection_health(s, threshold) for s in statuses]
        table = arrow(
            [{"Component": c.name, "Status": c.status, "Detail": c.detail} for c in components],
            ["Component", "Status", "Detail"],
        )
        overall = worst([report.status, *(c.status for c in components)])
        return HealthCard(report, statuses, components, overall, table)

    def _lag_samples(self, minutes: float, projection: str | None) -> pd.DataFrame:
        start = datetime.now(UTC) - timedelta(minutes=minutes)
        with self._lag_lock:
            previous = self._lag_windows.get((minutes, projection))
        if previous is not None and len(previous) and previous["time"].iloc[-1] > start:
            read_from = max(start, previous["time"].iloc[-1].to_pydatetime() - LAG_OVERLAP)
            kept = previous[(previous["time"] >= start) & (previous["time"] < read_from)]
            window = pd.concat([kept, self._read_lag(read_from, projection)], ignore_index=True)
        else:
            window = self._read_lag(start, projection)
        with self._lag_lock:
            self._lag_windows[(minutes, projection)] = window
        return window

    def _read_lag(self, since: datetime, projection: str | None) -> pd.DataFrame:
        """The samples from `since` on (inclusive), oldest first."""
        samples = self._ask(self._queries.get_lag_history(since=since, projection=projection))
        return pd.DataFrame(
            {
                "time": pd.to_datetime([s.sampled_at for s in samples], utc=True),
                "projection": pd.Series([s.projection for s in samples], dtype=object),
                "lag_events": pd.Series([s.lag_events for s in samples], dtype="int64"),
                "lag_seconds": pd.Series([s.lag_seconds for s in samples], dtype="float64"),
                "events_per_second": pd.Series([s.events_per_second for s in samples], dtype="float64"),
            }
        )

    def _lag_chart(self, measure: str, minutes: int, since: float) -> Chart:
        column, _axis = LAG_MEASURES[measure]
        samples = self.lag_samples(minutes, since=since)
        if samples.error is not None:
            raise samples.error
        assert samples.value is not None
        data = samples.value[["time", "projection", column]]
        newest = data["time"].iloc[-1].to_pydatetime() if len(data) else None
        return Chart(arrow(data), lag_chart_spec(measure, minutes), samples=len(data), newest=newest)

    def _projection_lag_chart(self, projection: str, minutes: int, since: float) -> Chart:
        samples = self.lag_samples(minutes, projection, since=since)
        if samples.error is not None:
            raise samples.error
        assert samples.value is not None
        data = samples.value[["time", "lag_events"]]
        newest = data["time"].iloc[-1].to_pydatetime() if len(data) else None
        return Chart(arrow(data), projection_lag_spec(projection, minutes), samples=len(data), newest=newest)

    def _metrics(self) -> MetricsCard:
        metrics: ServiceMetrics = self._ask(self._queries.get_metrics())
        commands = latency_table(metrics.commands, "Command") if metrics.commands else None
        latency_chart = None
        if commands is not None:
            bars = commands.melt(
                id_vars="Command",
                value_vars=["p50 (ms)", "p95 (ms)", "p99 (ms)"],
                var_name="percentile",
                value_name="latency",
            )
            bars["percentile"] = bars["percentile"].str.replace(" (ms)", "", regex=False)
            latency_chart = Chart(arrow(bars), latency_chart_spec())
        categories = sorted(set(metrics.command_errors) | set(metrics.query_errors))
        errors = (
            arrow(
                [
                    {
                        "Category": cat,
                        "Commands": metrics.command_errors.get(cat, 0),
                        "Queries": metrics.query_errors.get(cat, 0),
                    }
                    for cat in categories
                ]
            )
            if categories
            else None
        )
        cache = metrics.cache
        cache_table = arrow(
            [
                {"Measure": "hits", "Value": f"{cache.hits:,}"},
                {"Measure": "misses", "Value": f"{cache.misses:,}"},
                {"Measure": "hit rate", "Value": f"{cache.hit_rate:.1%}"},
                {"Measure": "evictions", "Value": f"{cache.evictions:,}"},
                {"Measure": "entries", "Value": f"{cache.size:,} of {cache.max_size:,}"},
            ]
        )
        refusals = (
            arrow(
                [
                    {"Actor": actor, "Refused": n}
                    for actor, n in sorted(metrics.rate_limit_refusals.items(), key=lambda kv: -kv[1])
                ]
            )
            if any(metrics.rate_limit_refusals.values())
            else None
        )
        return MetricsCard(
            metrics=metrics,
            commands_total=sum(s.count for s in metrics.commands),
            queries_total=sum(s.count for s in metrics.queries),
            commands=arrow(commands) if commands is not None else None,
            queries=arrow(latency_table(metrics.queries, "Query")) if metrics.queries else None,
            latency_chart=latency_chart,
            errors=errors,
            cache=cache_table,
            refusals=refusals,
        )

    def _job_traces(self) -> JobTraces:
        samples = self._ask(self._queries.get_lag_history(minutes=1))
        views = self.runtime.service.projections.view_freshness()
        refreshed = [v.refreshed_at for v in views if v.refreshed_at is not None]
        return JobTraces(
            last_lag_sample=max((s.sampled_at for s in samples), default=None),
            last_view_refresh=max(refreshed, default=None),
            last_verification_pass=self.runtime.service.projections.verification_progress().last_pass_at,
        )


def arrow(rows: pd.DataFrame | list[dict[str, Any]], columns: list[str] | None = None) -> pa.Table:
    """`rows` (a DataFrame, or dicts with `columns`) as an Arrow table."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=columns)
    return pa.Table.from_pandas(frame, preserve_index=False)


PARTITION_COLUMNS = ["Projection", "Partition", "Held by", "Position", "Behind head", "Applied"]
GRID_COLUMNS = [
    "Projection",
    "State",
    "Position",
    "Head",
    "Lag (events)",
    "Lag (s)",
    "Events/s",
    "Parked",
    "On failure",
    "Last error",
    "Runner",
]


def projection_health(status: ProjectionStatus, stale_after: float) -> ComponentHealth:
    """One projection as a health line, by the same rules as the core's projections check."""
    lag = f"{status.lag_events:,} events / {status.lag_seconds:.1f} s behind"
    name = f"projection {status.name}"
    if status.state == "faulted":
        return ComponentHealth(
            name, "unhealthy", f"faulted: {status.last_error or 'see the Projections page'}"
        )
    if status.state == "paused":
        return ComponentHealth(name, "degraded", f"paused, {lag}")
    if status.lag_seconds > stale_after:
        return ComponentHealth(name, "degraded", f"{lag} (more than {stale_after:.0f} s)")
    where = f"run by {status.owner}" if status.owner else "no process is running it right now"
    return ComponentHealth(name, "healthy", f"{status.state}, {lag}, {where}")


def latency_table(summaries: list[LatencySummary], kind: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                kind: s.name,
                "Count": s.count,
                "Errors": s.errors,
                "p50 (ms)": s.p50_ms,
                "p95 (ms)": s.p95_ms,
                "p99 (ms)": s.p99_ms,
            }
            for s in summaries
        ]
    )


# ---------------------------------------------------------------- chart specs (Vega-Lite)

# Time axes in the browser's own time zone (a "time" scale formats its labels in local time), the
# zone every other time on the console is shown in; the chart spec stays one for every viewer.
_TIME = {
    "field": "time",
    "type": "temporal",
    "title": "time (your time zone)",
    "scale": {"type": "time"},
    "axis": {"format": "%H:%M:%S", "labelOverlap": True},
}
_TIME_TOOLTIP = {
    "field": "time",
    "type": "temporal",
    "title": "time (your time zone)",
    "timeUnit": "hoursminutesseconds",
}


def _hover_points(tooltip: list[dict[str, Any]]) -> dict[str, Any]:
    """A layer that shows the sample nearest the pointer, with its values."""
    return {
        "params": [
            {
                "name": "hover",
                "select": {"type": "point", "nearest": True, "on": "mouseover", "clear": "mouseout"},
            }
        ],
        "mark": {"type": "point", "filled": True, "size": 50},
        "encoding": {
            "opacity": {"condition": {"param": "hover", "empty": False, "value": 1}, "value": 0},
            "tooltip": tooltip,
        },
    }


# Lines of the lag chart: teal, blue, violet, slate, ochre, green; no red or orange, which
# mean faulted or paused elsewhere on the page.
PROJECTION_LINE_COLORS = ("#1F6F78", "#1565C0", "#6A1B9A", "#455A64", "#8D6E00", "#2E7D4F")


@lru_cache(maxsize=32)
def lag_chart_spec(measure: str, minutes: int) -> dict[str, Any]:
    column, axis = LAG_MEASURES[measure]
    value = {"field": column, "type": "quantitative", "title": axis, "scale": {"zero": True}}
    return {
        "title": f"{measure} per projection, last {minutes} minutes",
        "height": 360,
        "encoding": {
            "x": _TIME,
            "y": value,
            # Calm colours of their own: the default palette's third colour is red, which drew a
            # healthy projection in the colour of an alarm.
            "color": {
                "field": "projection",
                "type": "nominal",
                "title": "projection",
                "scale": {"range": list(PROJECTION_LINE_COLORS)},
            },
        },
        "layer": [
            {"mark": {"type": "line", "strokeWidth": 2}},
            _hover_points([_TIME_TOOLTIP, {"field": "projection", "type": "nominal"}, value]),
        ],
    }


@lru_cache(maxsize=32)
def projection_lag_spec(projection: str, minutes: int) -> dict[str, Any]:
    value = {"field": "lag_events", "type": "quantitative", "title": "lag (events)", "scale": {"zero": True}}
    return {
        "title": f"Lag of {projection}, last {minutes} minutes",
        "height": 220,
        "encoding": {"x": _TIME, "y": value},
        "layer": [
            {"mark": {"type": "area", "line": True, "opacity": 0.35}},
            _hover_points([_TIME_TOOLTIP, value]),
        ],
    }


@lru_cache(maxsize=1)
def throughput_chart_spec() -> dict[str, Any]:
    """Commands and queries per second: data columns time, kind, rate."""
    rate = {"field": "rate", "type": "quantitative", "title": "messages per second", "scale": {"zero": True}}
    return {
        "title": "Throughput while this page is open",
        "height": 300,
        "encoding": {
            "x": _TIME,
            "y": rate,
            "color": {"field": "kind", "type": "nominal", "title": ""},
        },
        "layer": [
            {"mark": {"type": "line", "strokeWidth": 2}},
            _hover_points([_TIME_TOOLTIP, {"field": "kind", "type": "nominal"}, {**rate, "format": ",.1f"}]),
        ],
    }


@lru_cache(maxsize=1)
def latency_chart_spec() -> dict[str, Any]:
    """Latency percentiles per command, grouped bars: data columns Command, percentile, latency."""
    latency = {"field": "latency", "type": "quantitative", "title": "latency (ms)"}
    return {
        "title": "Command latency percentiles",
        "height": 300,
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "x": {"field": "Command", "type": "nominal", "title": "command", "axis": {"labelAngle": -30}},
            "xOffset": {"field": "percentile", "type": "nominal", "sort": ["p50", "p95", "p99"]},
            "y": latency,
            "color": {
                "field": "percentile",
                "type": "nominal",
                "title": "percentile",
                "sort": ["p50", "p95", "p99"],
            },
            "tooltip": [
                {"field": "Command", "type": "nominal"},
                {"field": "percentile", "type": "nominal"},
                {**latency, "format": ",.1f"},
            ],
        },
    }
