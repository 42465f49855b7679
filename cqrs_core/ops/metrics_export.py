"""Prometheus metrics at /metrics, one endpoint per process (issue 17, part 3).

Design: each process that runs commands or queries serves its own endpoint on a port of its own
(CQRS_METRICS_PORT for `cqrs-console serve` or a `cqrs-console worker` run by itself,
CQRS_WORKER_METRICS_PORT for the worker `serve` supervises), bound to CQRS_METRICS_ADDRESS
(127.0.0.1 by default) and off unless a port is set. Chosen over prometheus_client's multiprocess
mode because the console's processes are few and long-lived (one Streamlit server, at most one
worker): a port each needs no shared directory to wipe at every start, keeps every gauge exact
(multiprocess mode cannot serve custom collectors from the worker, nor live gauges), and lets
Prometheus tell the processes apart by `instance`; a restarted worker simply resets its counters,
which `rate()` handles.

What is served:
* the command and query histograms and the query-cache counter that cqrs_core/infra/metrics.py
  feeds from the command bus and the query bus (plus prometheus_client's process metrics);
* per projection and per statistics view, gauges computed at scrape time from the database by
  `ProjectionCollector`, so they are never stale: one `ProjectionManager.status()` (four bounded
  statements: the lag count stops at LAG_COUNT_CAP) and one read of `view_refreshes`. Concurrent
  scrapes share one computation, and a database that does not answer gives
  `cqrs_projection_metrics_up 0` instead of an error page;
* open alerts by rule and severity (`cqrs_alerts_open`, from the `alert_summary` read model), with
  a 0 for every rule that has none open, so an alerting panel always has a series.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from cqrs_core.ops.alerts.rules import RULES
from cqrs_core.read.handlers.alerts import open_alert_counts

log = logging.getLogger(__name__)

# Every state ProjectionManager.status() reports; each projection gets one sample per state
# (1 for its current one) so that a dashboard can count projections in a state.
PROJECTION_STATES = ("running", "catching_up", "paused", "stopped", "faulted", "rebuilding")


class MetricsPortUnavailable(SystemExit):
    """The metrics endpoint cannot listen where it is told to; carries one line."""


class _DefaultRegistry(Collector):
    """The process's default registry (command and query histograms, process metrics), served
    next to the database gauges without registering them there for good."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class ProjectionCollector(Collector):
    """Per-projection and per-view gauges, read from the database at each scrape. `manager`
    returns the process's ProjectionManager, or None while the process has none yet (the app's
    runtime still opening)."""

    def __init__(self, manager: Callable[[], Any]) -> None:
        self._manager = manager
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes queue behind one computation
            families, up = self._families()
        yield from families
        yield GaugeMetricFamily(
            "cqrs_projection_metrics_up",
            "1 if the per-projection gauges could be read from the database at this scrape, else 0.",
            value=up,
        )

    def _families(self) -> tuple[list[Metric], int]:
        try:
            manager = self._manager()
            if manager is None:
                return [], 0
            statuses = manager.status()
            views = manager.view_freshness()
        except Exception as exc:  # the database is down or slow: say so in the exposition
            log.warning("projection metrics not read: %s", getattr(exc, "user_message", None) or exc)
            log.debug("projection metrics not read", exc_info=True)
            return [], 0
        position = GaugeMetricFamily(
            "cqrs_projection_position", "Last event position the projection applied.", labels=["projection"]
        )
        head = GaugeMetricFamily(
            "cqrs_projection_head_position", "Position of the newest event in the log.", labels=["projection"]
        )
        lag_events = GaugeMetricFamily(
            "cqrs_projection_lag_events", "Events the projection has not applied yet.", labels=["projection"]
        )
        lag_seconds = GaugeMetricFamily(
            "cqrs_projection_lag_seconds",
            "Age of the oldest event the projection has not applied (0 when caught up).",
            labels=["projection"],
        )
        parked = GaugeMetricFamily(
            "cqrs_projection_parked_events", "Events waiting in the parked list.", labels=["projection"]
        )
        state = GaugeMetricFamily(
            "cqrs_projection_state",
            "1 for the projection's current state, else 0.",
            labels=["projection", "state"],
        )
        for s in statuses:
            position.add_metric([s.name], s.position)
            head.add_metric([s.name], s.head)
            lag_events.add_metric([s.name], s.lag_events)
            lag_seconds.add_metric([s.name], s.lag_seconds)
            parked.add_metric([s.name], s.parked)
            for name in PROJECTION_STATES:
                state.add_metric([s.name, name], 1.0 if s.state == name else 0.0)
        age = GaugeMetricFamily(
            "cqrs_view_age_seconds",
            "Seconds since the statistics view was last refreshed (no sample before its first refresh).",
            labels=["view"],
        )
        now = datetime.now(UTC)
        for v in views:
            if v.refreshed_at is not None:
                age.add_metric([v.view_name], max(0.0, (now - v.refreshed_at).total_seconds()))
        return [position, head, lag_events, lag_seconds, parked, state, age, open_alerts(manager.engine)], 1


def open_alerts(engine: Engine) -> Metric:
    """`cqrs_alerts_open{rule, severity}`: every rule's open alerts (0 when none), and those of
    any other rule someone raised an alert for."""
    with engine.connect() as conn:
        counts = open_alert_counts(conn)
    family = GaugeMetricFamily(
        "cqrs_alerts_open", "Alerts open now (raised, acknowledged or snoozed).", labels=["rule", "severity"]
    )
    for rule in RULES.values():
        family.add_metric([rule.name, rule.severity], counts.pop((rule.name, rule.severity), 0))
    for (rule_name, severity), n in sorted(counts.items()):
        family.add_metric([rule_name, severity], n)
    return family


def metrics_registry(manager: Callable[[], Any]) -> CollectorRegistry:
    """What one endpoint serves: the process's metrics and the database gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DefaultRegistry())
    registry.register(ProjectionCollector(manager))
    return registry


def serve_metrics(port: int | None, address: str, manager: Callable[[], Any]) -> Callable[[], None] | None:
    """Serve /metrics on `address`:`port` in a daemon thread; returns how to stop it, or None when
    `port` is None. Raises MetricsPortUnavailable (one line) when it cannot listen there."""
    if port is None:
        return None
    try:
        server, thread = start_http_server(port, addr=address, registry=metrics_registry(manager))
    except OSError as exc:
        reason = (
            "the port is in use or reserved"
            if exc.errno in (errno.EADDRINUSE, errno.EACCES)
            else (exc.strerror or str(exc))
        )
        raise MetricsPortUnavailable(
            f"Cannot serve metrics on {address} port {port} ({reason}): "
            "choose another with CQRS_METRICS_PORT, or an address of this machine with CQRS_METRICS_ADDRESS."
        ) from None
    log.info("metrics at http://%s:%s/metrics", address, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
