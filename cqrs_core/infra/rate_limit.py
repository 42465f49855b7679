"""A token bucket per actor: `rate` tokens a second, at most `burst` saved up."""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict

MAX_ACTORS = 10_000
OTHER_ACTORS = "(other actors)"


class _Buckets:
    """The buckets, least recently used first, never more than `max_actors` of them.

    A bucket that has refilled to `burst` equals a fresh one, so forgetting it changes nothing:
    each new actor first drops the full buckets at the old end. Only a burst of more distinct
    actors than `max_actors` within one refill time forgets partly spent buckets (the least
    recently used), which at worst lets those actors start again from a full bucket."""

    def __init__(self, limiter: TokenBucketLimiter, max_actors: int) -> None:
        self._limiter, self.max_actors = limiter, max_actors
        self._entries: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, actor: str, default: tuple[float, float]) -> tuple[float, float]:
        entry = self._entries.get(actor)
        if entry is None:
            return default
        self._entries.move_to_end(actor)
        return entry

    def __setitem__(self, actor: str, entry: tuple[float, float]) -> None:
        new = actor not in self._entries
        self._entries[actor] = entry
        self._entries.move_to_end(actor)
        if new:
            self._forget_old(now=entry[1])

    def _forget_old(self, now: float) -> None:
        rate, burst = self._limiter.rate, self._limiter.burst
        while len(self._entries) > 1:
            actor, (tokens, last) = next(iter(self._entries.items()))
            if len(self._entries) <= self.max_actors and tokens + (now - last) * rate < burst:
                return
            del self._entries[actor]


class _RefusalCounts(Counter):
    """Refusals per actor for the metrics, at most `max_actors` names: the rest are counted
    together under OTHER_ACTORS."""

    def __init__(self, max_actors: int) -> None:
        super().__init__()
        self.max_actors = max_actors

    def __setitem__(self, actor: str, count: int) -> None:
        if actor not in self and len(self) >= self.max_actors:
            # `counts[actor] += 1` on an unseen actor sets it to 1: add that to the shared name.
            actor, count = OTHER_ACTORS, self.get(OTHER_ACTORS, 0) + count
        super().__setitem__(actor, count)


class TokenBucketLimiter:
    def __init__(self, rate: float, burst: int, clock=time.monotonic, max_actors: int = MAX_ACTORS) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        # Bounded (see _Buckets): one bucket per actor ever seen would grow without end.
        self._buckets = _Buckets(self, max_actors)
        self._lock = threading.Lock()
        self.refusals: Counter[str] = _RefusalCounts(max_actors)

    def try_acquire(self, actor: str, count: int = 1) -> float:
        """Take `count` tokens (a batch of commands takes one each); returns 0 when allowed, else
        the seconds until that many are available. A count above `burst` can never be allowed
        (the bucket never holds that many): it returns infinity and charges nothing, and the
        caller refuses it as too large rather than asking to wait."""
        if count > self.burst:
            return float("inf")
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
