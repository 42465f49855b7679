"""In-process counters and latency percentiles for commands and queries (thread-safe), and the
Prometheus histograms fed from the same calls (exported by cqrs_core/ops/metrics_export.py).

A recorder made with `kind="command"` or `kind="query"` also observes each call in
`cqrs_command_duration_seconds` / `cqrs_query_duration_seconds`, labelled by message type and
outcome (`ok`, or the error category). The labels are bounded: message types are class names,
error categories a fixed set. The metrics live in prometheus_client's default registry, one
set per process, shared by every service of the process."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

WINDOW = 5000  # latencies kept per message type for percentiles

# Seconds: a command is two round trips (a few ms); a query's timeout is seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OK = "ok"

COMMAND_DURATION = Histogram(
    "cqrs_command_duration_seconds",
    "Time to run a command, by command type and outcome (ok or the error category).",
    ("command", "outcome"),
    buckets=LATENCY_BUCKETS,
)
QUERY_DURATION = Histogram(
    "cqrs_query_duration_seconds",
    "Time to answer a query, by query type and outcome (ok or the error category).",
    ("query", "outcome"),
    buckets=LATENCY_BUCKETS,
)
QUERY_CACHE = PromCounter(
    "cqrs_query_cache_lookups",
    "Cacheable queries looked up in the query cache, by query type and result (hit or miss).",
    ("query", "result"),
)


def record_cache_lookup(query: str, hit: bool) -> None:
    # Both results exist from a query type's first lookup (a hit count of 0 is a series), so a
    # hit ratio has a numerator before the first hit.
    hits, misses = QUERY_CACHE.labels(query, "hit"), QUERY_CACHE.labels(query, "miss")
    (hits if hit else misses).inc()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass(frozen=True)
class LatencySummary:
    name: str
    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


class MetricsRecorder:
    """Counts and latencies per message type, errors per category."""

    def __init__(self, kind: Literal["command", "query"] | None = None) -> None:
        # None: in-process figures only (benchmarks, tests of this class).
        self._histogram = {"command": COMMAND_DURATION, "query": QUERY_DURATION, None: None}[kind]
        # The histogram's child of each (name, outcome), looked up once: `labels()` takes a lock
        # and builds its key on every call. Children are never removed from these histograms.
        self._children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._latency: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._count: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._errors_by_type: Counter[str] = Counter()

    def record(self, name: str, duration_ms: float, error_category: str | None = None) -> None:
        if self._histogram is not None:
            key = (name, error_category or OK)
            child = self._children.get(key)
            if child is None:
                child = self._children.setdefault(key, self._histogram.labels(*key))
            child.observe(duration_ms / 1000)
        with self._lock:
            self._count[name] += 1
            self._latency[name].append(duration_ms)
            if error_category:
                self._errors[error_category] += 1
                self._errors_by_type[name] += 1

    def summaries(self) -> list[LatencySummary]:
        with self._lock:
            snapshot = {name: sorted(values) for name, values in self._latency.items()}
            counts, errors = dict(self._count), dict(self._errors_by_type)
        return [
            LatencySummary(
                name,
                counts[name],
                errors.get(name, 0),
                percentile(v, 0.5),
                percentile(v, 0.95),
                percentile(v, 0.99),
            )
            for name, v in sorted(snapshot.items())
        ]

    def errors_by_category(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def total(self) -> int:
        with self._lock:
            return sum(self._count.values())
