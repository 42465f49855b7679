"""How far behind each projection is, now and over time (`lag_samples`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, text

from cqrs_core.eventlog.cursors import HEAD_SQL
from cqrs_core.projections.engine.locks import JOB_NAMESPACE

# Counting unprocessed events walks the (txid, position) index; past this many the lag is
# estimated from positions instead, so a status call stays cheap during a huge catch-up.
LAG_COUNT_CAP = 200_000
SAMPLER_LOCK = 1


@dataclass(frozen=True)
class LagSample:
    projection: str
    sampled_at: datetime
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    events_per_second: float


@dataclass(frozen=True)
class Measurement:
    name: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    events_applied: int
    measured_at: datetime


MEASURE_SQL = text(
    f"""
    SELECT c.name, c.last_position, c.events_applied, h.head, clock_timestamp() AS now,
           (SELECT count(*) FROM (SELECT 1 FROM events e
                                  WHERE (e.txid, e.position) > (c.last_txid, c.last_position)
                                  LIMIT :cap) AS pending) AS lag_events,
           (SELECT e.recorded_at FROM events e
             WHERE (e.txid, e.position) > (c.last_txid, c.last_position)
             ORDER BY e.txid, e.position LIMIT 1) AS oldest_pending
    FROM projection_checkpoints c
    CROSS JOIN ({HEAD_SQL}) AS h(head)
    WHERE c.name = ANY(CAST(:names AS text[]))
    ORDER BY array_position(CAST(:names AS text[]), c.name)
    """
)


def measure(conn: Connection, names: Sequence[str]) -> list[Measurement]:
    """Position, head, lag in events and lag in seconds (age of the oldest unprocessed event,
    by its commit clock `recorded_at`: `occurred_at` may be business time in the past)."""
    out = []
    for r in conn.execute(MEASURE_SQL, {"names": list(names), "cap": LAG_COUNT_CAP}):
        lag_events = int(r.lag_events)
        if lag_events >= LAG_COUNT_CAP:
            lag_events = max(lag_events, int(r.head) - int(r.last_position))
        lag_seconds = max(0.0, (r.now - r.oldest_pending).total_seconds()) if r.oldest_pending else 0.0
        out.append(
            Measurement(
                r.name,
                int(r.last_position),
                int(r.head),
                lag_events,
                lag_seconds,
                int(r.events_applied),
                r.now,
            )
        )
    return out


def sample(engine: Engine, names: Sequence[str], min_interval: float | None = None) -> list[LagSample]:
    """Write one sample per projection. Several processes may run the sampler: a transaction
    lock lets one sample at a time, and `min_interval` drops a sample taken too soon after another."""
    with engine.begin() as conn:
        if not conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:ns, :k)"), {"ns": JOB_NAMESPACE, "k": SAMPLER_LOCK}
        ).scalar_one():
            return []
        if min_interval:
            recent = conn.execute(
                text(
                    "SELECT max(sampled_at) > clock_timestamp() - make_interval(secs => :s) FROM lag_samples"
                ),
                {"s": min_interval},
            ).scalar_one()
            if recent:
                return []
        previous = {
            r.projection: r
            for r in conn.execute(
                text(
                    """
                    SELECT DISTINCT ON (projection) projection, sampled_at, events_applied
                    FROM lag_samples WHERE projection = ANY(CAST(:names AS text[]))
                    ORDER BY projection, sampled_at DESC
                    """
                ),
                {"names": list(names)},
            )
        }
        samples = []
        for m in measure(conn, names):
            rate = 0.0
            prev = previous.get(m.name)
            if prev is not None:
                seconds = (m.measured_at - prev.sampled_at).total_seconds()
                # A rebuild resets events_applied; a long gap says nothing about the rate now.
                if 0 < seconds <= 60:
                    rate = max(0.0, (m.events_applied - prev.events_applied) / seconds)
            samples.append(
                LagSample(m.name, m.measured_at, m.position, m.head, m.lag_events, m.lag_seconds, rate)
            )
            conn.execute(
                text(
                    """
                    INSERT INTO lag_samples (projection, sampled_at, position, head, lag_events, lag_seconds,
                                             events_per_second, events_applied)
                    VALUES (:p, :t, :pos, :head, :le, :ls, :eps, :applied)
                    ON CONFLICT DO NOTHING
                    """
                ),
                {
                    "p": m.name,
                    "t": m.measured_at,
                    "pos": m.position,
                    "head": m.head,
                    "le": m.lag_events,
                    "ls": m.lag_seconds,
                    "eps": rate,
                    "applied": m.events_applied,
                },
            )
        return samples


def prune(engine: Engine, retention: timedelta) -> int:
    """Delete samples older than `retention`; returns how many went."""
    with engine.begin() as conn:
        result = conn.execute(
            text("DELETE FROM lag_samples WHERE sampled_at < clock_timestamp() - make_interval(secs => :s)"),
            {"s": retention.total_seconds()},
        )
        return result.rowcount


def history(engine: Engine, projection: str | None, since: datetime) -> list[LagSample]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """
                SELECT projection, sampled_at, position, head, lag_events, lag_seconds, events_per_second
                FROM lag_samples
                WHERE sampled_at >= :since AND (CAST(:p AS text) IS NULL OR projection = :p)
                ORDER BY sampled_at, projection
                """
            ),
            {"since": since, "p": projection},
        )
        return [LagSample(**r._mapping) for r in rows]


def latest_rates(conn: Connection, names: Sequence[str], fresh_seconds: float) -> dict[str, float]:
    """events/s from each projection's newest sample, if it is recent enough to mean 'now'."""
    rows = conn.execute(
        text(
            """
            SELECT DISTINCT ON (projection) projection, events_per_second
            FROM lag_samples
            WHERE projection = ANY(CAST(:names AS text[]))
              AND sampled_at > clock_timestamp() - make_interval(secs => :fresh)
            ORDER BY projection, sampled_at DESC
            """
        ),
        {"names": list(names), "fresh": fresh_seconds},
    )
    return {r.projection: float(r.events_per_second) for r in rows}
