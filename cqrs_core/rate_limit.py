"""A token bucket per actor: `rate` tokens a second, at most `burst` saved up."""

from __future__ import annotations

import threading
import time
from collections import Counter


class TokenBucketLimiter:
    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.refusals: Counter[str] = Counter()

    def try_acquire(self, actor: str) -> float:
        """Take one token; returns 0 when allowed, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(actor, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[actor] = (tokens - 1.0, now)
                return 0.0
            self._buckets[actor] = (tokens, now)
            self.refusals[actor] += 1
            return (1.0 - tokens) / self.rate
