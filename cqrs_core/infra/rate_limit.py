"""Per-actor rate limits that hold across every process of a deployment.

A token bucket per (limit, actor) lives in PostgreSQL (`rate_limit_buckets`, migration 0014): it
refills at `rate` tokens a second up to `burst`, by the database's clock. A process does not pay
a round trip per command: it takes a *lease* of up to `lease` tokens at once (a tenth of a second
of the rate, at most a tenth of the burst) with one `INSERT … ON CONFLICT … DO UPDATE …
RETURNING`, and spends it locally. So an actor gets at most the limit across all processes, plus
at most one unspent lease per process; with N processes, not N times the limit.

What a process remembers of the shared bucket (how many tokens it held when the last lease was
taken) can only overestimate it, since other processes only take tokens away: when even that
estimate is short, the request is refused without asking the database, so a flood of refused
requests costs no round trips.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Protocol

import psycopg2.errors
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import InfrastructureError

MAX_ACTORS = 10_000
OTHER_ACTORS = "(other actors)"
# A lease is this many seconds' worth of the rate: at most ten round trips a second per actor and
# process, and at most this much of the rate taken ahead by each process.
LEASE_SECONDS = 0.1
# How often a process deletes the buckets that have filled up again (they equal missing rows).
PRUNE_EVERY_SECONDS = 300.0


class RateLimiter(Protocol):
    """What the command and query buses need of a rate limit."""

    burst: int
    refusals: Counter[str]

    def try_acquire(self, actor: str, count: int = 1) -> float:
        """0 when `actor` may go on (charged `count` tokens), else the seconds to wait."""
        ...


def lease_size(rate: float, burst: int) -> int:
    """Tokens one round trip takes: a tenth of a second of the rate, at most a tenth of the burst."""
    return max(1, min(burst // 10, math.ceil(rate * LEASE_SECONDS)))


class _RefusalCounts(Counter):
    """Refusals per actor for this process's metrics, at most `max_actors` names: the rest are
    counted together under OTHER_ACTORS."""

    def __init__(self, max_actors: int) -> None:
        super().__init__()
        self.max_actors = max_actors

    def __setitem__(self, actor: str, count: int) -> None:
        if actor not in self and len(self) >= self.max_actors:
            # `counts[actor] += 1` on an unseen actor sets it to 1: add that to the shared name.
            actor, count = OTHER_ACTORS, self.get(OTHER_ACTORS, 0) + count
        super().__setitem__(actor, count)


@dataclass
class _Lease:
    """An actor's tokens held by this process, and the shared bucket as last seen: `shared`
    tokens at `seen` (this process's monotonic clock, taken before the round trip)."""

    tokens: int = 0
    shared: float = math.inf
    seen: float = 0.0


class _Leases:
    """The leases, least recently used first, never more than `max_actors` of them. Forgetting one
    forgets fewer than a lease of tokens (the actor gets a little less, never more)."""

    def __init__(self, max_actors: int) -> None:
        self.max_actors = max_actors
        self._entries: OrderedDict[str, _Lease] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, actor: str) -> _Lease:
        lease = self._entries.get(actor)
        if lease is None:
            lease = self._entries[actor] = _Lease()
            while len(self._entries) > self.max_actors:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(actor)
        return lease


def _take_sql(prune: bool) -> str:
    # The bucket refilled up to now (the database's clock, shared by every process), never
    # backwards: a statement that waited for the row lock may have started before the last refill.
    refilled = (
        "least(CAST(:burst AS float8), b.tokens + CAST(:rate AS float8)"
        " * greatest(0, CAST(extract(epoch FROM now() - b.refilled_at) AS float8)))"
    )
    # A lease takes up to :want tokens, whatever is there, as long as that covers :need.
    granted = f"CASE WHEN {refilled} >= :need THEN least(CAST(:want AS float8), floor({refilled})) ELSE 0 END"
    take = f"""
        INSERT INTO rate_limit_buckets AS b (limit_name, actor, tokens, granted, refilled_at)
        VALUES (:limit, :actor, CAST(:burst AS float8) - :want, :want, now())
        ON CONFLICT (limit_name, actor) DO UPDATE
           SET tokens = {refilled} - ({granted}),
               granted = {granted},
               refilled_at = greatest(b.refilled_at, now())
        RETURNING granted, tokens"""
    prune_full = (
        "DELETE FROM rate_limit_buckets WHERE limit_name = :limit AND tokens + CAST(:rate AS float8)"
        " * CAST(extract(epoch FROM now() - refilled_at) AS float8) >= :burst; "
    )
    return (prune_full if prune else "") + take


class SharedRateLimiter:
    """One limit (`name`: "commands", "queries") of `rate` tokens a second, `burst` saved up, per
    actor, shared through `engine`'s database by every process that uses the same name. The
    engine should be in autocommit mode (the command bus's): a lease is then one round trip."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        rate: float,
        burst: int,
        *,
        timeout: float = 10.0,
        max_actors: int = MAX_ACTORS,
        clock=time.monotonic,
    ) -> None:
        self.engine, self.name = engine, name
        self.rate, self.burst = float(rate), int(burst)
        self.lease = lease_size(self.rate, self.burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._leases = _Leases(max_actors)
        self.refusals: Counter[str] = _RefusalCounts(max_actors)
        limit = f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}; "
        self._take, self._take_and_prune = text(limit + _take_sql(False)), text(limit + _take_sql(True))
        self._next_prune = clock() + PRUNE_EVERY_SECONDS

    def try_acquire(self, actor: str, count: int = 1) -> float:
        """Take `count` tokens (a batch of commands takes one each); returns 0 when allowed, else
        the seconds until that many are available. A count above `burst` can never be allowed
        (the bucket never holds that many): it returns infinity and charges nothing, and the
        caller refuses it as too large rather than asking to wait."""
        if count > self.burst:
            return math.inf
        for _ in range(3):  # another thread may spend what a lease brought before this one does
            with self._lock:
                lease = self._leases.get(actor)
                if lease.tokens >= count:
                    lease.tokens -= count
                    return 0.0
                need = count - lease.tokens
                now = self._clock()
                known = min(self.burst, lease.shared + (now - lease.seen) * self.rate)
                if known < need:  # the shared bucket cannot hold enough yet: no need to ask it
                    self.refusals[actor] += 1
                    return (need - known) / self.rate
                prune = now >= self._next_prune
                if prune:
                    self._next_prune = now + PRUNE_EVERY_SECONDS
            granted, left = self._lease(actor, need, max(need, self.lease), prune)
            with self._lock:
                lease = self._leases.get(actor)
                lease.tokens += granted
                lease.shared, lease.seen = left, now
        with self._lock:
            self.refusals[actor] += 1
        return 1.0 / self.rate

    def _lease(self, actor: str, need: int, want: int, prune: bool) -> tuple[int, float]:
        """(tokens granted, tokens left in the shared bucket): one statement, one round trip."""
        params = {
            "limit": self.name,
            "actor": actor,
            "rate": self.rate,
            "burst": self.burst,
            "need": need,
            "want": want,
        }
        statement = self._take_and_prune if prune else self._take
        for attempt in (1, 2):
            try:
                with translate_db_errors(), self.engine.connect() as conn:
                    row = conn.execute(statement, params).one()
                    conn.commit()
                return int(row.granted), float(row.tokens)
            except InfrastructureError as exc:
                cause = exc.__cause__
                if isinstance(getattr(cause, "orig", None), psycopg2.errors.InsufficientPrivilege):
                    raise InfrastructureError(
                        f"The database role in use may not keep the {self.name} rate limit "
                        "(table rate_limit_buckets); run as cqrs_app (CQRS_DATABASE_ROLE).",
                        detail="InsufficientPrivilege",
                    ) from exc
                # A pooled connection the server dropped (a restart, a pooler): once, on a fresh one.
                if attempt == 2 or not (isinstance(cause, DBAPIError) and cause.connection_invalidated):
                    raise
        raise AssertionError("unreachable")
