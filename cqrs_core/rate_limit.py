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

    def try_acquire(self, actor: str, count: int = 1) -> float:
        """Take `count` tokens (a batch of commands takes one each); returns 0 when allowed, else
        the seconds until that many are available. A count above `burst` can never be allowed:
        the caller must refuse it."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(actor, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= count:
                self._buckets[actor] = (tokens - count, now)
                return 0.0
            self._buckets[actor] = (tokens, now)
            self.refusals[actor] += 1
            return (count - tokens) / self.rate
