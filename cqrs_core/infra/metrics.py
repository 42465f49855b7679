"""In-process counters and latency percentiles for commands and queries (thread-safe)."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from dataclasses import dataclass

WINDOW = 5000  # latencies kept per message type for percentiles


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

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._count: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._errors_by_type: Counter[str] = Counter()

    def record(self, name: str, duration_ms: float, error_category: str | None = None) -> None:
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
