"""The query bus's cache: size-bounded, a TTL per entry, thread-safe, with stampede protection
(concurrent identical misses compute once) and counters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cachetools import TLRUCache


@dataclass(frozen=True)
class CacheEntry:
    value: Any
    ttl: float
    # Checkpoint cursor (txid, position) of each projection the value was read from, taken in
    # the same snapshot as the value: a read-your-writes request can tell if it is fresh enough.
    cursors: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def covers(self, target: tuple[int, int] | None, projections: tuple[str, ...]) -> bool:
        if target is None:
            return True
        return all(self.cursors.get(p, (0, 0)) >= target for p in projections)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    size: int = 0
    max_size: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _Cache(TLRUCache):
    def __init__(self, maxsize: int, owner: QueryCache) -> None:
        super().__init__(maxsize, ttu=lambda _k, entry, now: now + entry.ttl, timer=time.monotonic)
        self._owner = owner

    def popitem(self):  # called when full: count evictions
        item = super().popitem()
        self._owner.stats.evictions += 1
        return item


class QueryCache:
    def __init__(self, maxsize: int) -> None:
        self._lock = threading.Lock()
        self._cache = _Cache(maxsize, self)
        self._inflight: dict[str, threading.Event] = {}
        self.stats = CacheStats(max_size=maxsize)

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._cache.get(key)
        return entry

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], CacheEntry],
        accept: Callable[[CacheEntry], bool] = lambda e: True,
    ) -> tuple[CacheEntry, bool]:
        """The cached entry if it is acceptable, else compute it once for every concurrent caller.
        Returns (entry, was_hit)."""
        while True:
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None and accept(entry):
                    self.stats.hits += 1
                    return entry, True
                waiter = self._inflight.get(key)
                if waiter is None:
                    waiter = threading.Event()
                    self._inflight[key] = waiter
                    self.stats.misses += 1
                    leader = True
                else:
                    leader = False
            if not leader:
                waiter.wait(timeout=60)
                continue  # the leader's entry is in the cache now (or it failed: try ourselves)
            try:
                entry = compute()
                with self._lock:
                    self._cache[key] = entry
                return entry, False
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
                waiter.set()

    def invalidate(self, prefix: str) -> int:
        """Drop every entry whose key starts with `prefix` (e.g. a query type); returns how many."""
        with self._lock:
            keys = [k for k in self._cache.keys() if k.startswith(prefix)]
            for k in keys:
                self._cache.pop(k, None)
        return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def snapshot(self) -> CacheStats:
        with self._lock:
            self._cache.expire()
            return CacheStats(
                self.stats.hits,
                self.stats.misses,
                self.stats.evictions,
                len(self._cache),
                self.stats.max_size,
            )
