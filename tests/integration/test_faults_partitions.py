"""Partitioned projections under kill -9 (issue 19, part 3): `python -m cqrs_core worker`
processes share every projection's partitions (CQRS_PROJECTION_PARTITIONS=4) while events are
appended; the holders of partitions are killed with SIGKILL, the survivors (and a newly started
worker) take the partitions over within seconds, and at the end every partition has applied each
event of its streams exactly once and `verify` (a full replay) matches the live tables.

The normal suite runs the fast variant (two kills); `-m slow` runs the long one (ten kills, more
load). Reproduce: .venv/bin/pytest -s tests/integration/test_faults_partitions.py -m "slow or not slow"
"""

from __future__ import annotations

import threading
import time

import pytest
from fault_tools import OBSERVER_APP, Processes, owner_of, wait_for
from sqlalchemy import text
from test_projection_partitions import assert_each_partition_applied_its_events_once
from workflow_histories import bulk_workload

from cqrs_core.eventlog.store import EventStore
from cqrs_core.infra.db import make_engine
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.projections.engine.verify import verify

PARTITIONS = 4


def holders(engine) -> dict[str, int]:
    """How many partitions (of every projection) each worker holds now: the partition rows'
    owners whose heartbeat is fresh, for the partitions whose lock some session holds."""
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT owner, count(*) FROM projection_partitions"
                " WHERE owner IS NOT NULL AND heartbeat_at > clock_timestamp() - interval '3 seconds'"
                " GROUP BY owner"
            )
        ).all()
    return {owner: int(n) for owner, n in rows}


def caught_up(engine) -> bool:
    with engine.connect() as c:
        return bool(
            c.execute(
                text(
                    "SELECT bool_and((p.last_txid, p.last_position) >= (e.txid, e.position))"
                    " FROM projection_partitions p,"
                    " (SELECT txid, position FROM events ORDER BY txid DESC, position DESC LIMIT 1) e"
                )
            ).scalar_one()
        )


def run_kills(db_url, tmp_path, *, kills: int, workers: int, workflows_per_second: float) -> dict[str, float]:
    engine = make_engine(db_url, pool_size=2, application_name=OBSERVER_APP)
    store = EventStore(engine)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            bulk_workload(store, 1)
            time.sleep(1 / workflows_per_second)

    loader = threading.Thread(target=load, name="partition-load", daemon=True)
    takeovers: list[float] = []
    settings = {"projection_partitions": PARTITIONS}
    total = PARTITIONS * len(PROJECTION_NAMES)
    with Processes(tmp_path / "logs") as procs:
        try:
            live = [procs.worker(db_url, **settings) for _ in range(workers)]
            loader.start()
            wait_for(
                lambda: len(holders(engine)) == workers and sum(holders(engine).values()) == total,
                60,
                "the workers to share every partition",
            )
            for _ in range(kills):
                held = holders(engine)
                by_owner = {owner_of(p): p for p in live if p.poll() is None}
                victim = by_owner[max((o for o in held if o in by_owner), key=held.get)]
                procs.kill9(victim)
                live.remove(victim)
                killed_at = time.monotonic()
                # The survivors take the victim's partitions (its lock session is gone at once).
                wait_for(
                    lambda v=owner_of(victim): (
                        v not in holders(engine) and sum(holders(engine).values()) == total
                    ),
                    20,
                    "the survivors to take the killed worker's partitions",
                )
                takeovers.append(time.monotonic() - killed_at)
                live.append(procs.worker(db_url, **settings))  # a new worker: the partitions rebalance
                wait_for(
                    lambda n=len(live): len(holders(engine)) == n and sum(holders(engine).values()) == total,
                    60,
                    "the new worker to get its share",
                )
        finally:
            stop.set()
            loader.join(10)
        wait_for(lambda: caught_up(engine), 60, "the workers to catch up")
        for name in PROJECTION_NAMES:
            assert_each_partition_applied_its_events_once(engine, name, PARTITIONS)
        report = verify(engine)
        assert report.ok, "\n".join(report.lines())
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM parked_events")).scalar_one() == 0
    engine.dispose()
    print(f"take-over after kill -9: {', '.join(f'{t:.2f} s' for t in takeovers)}")
    return {"max_takeover": max(takeovers)}


def test_killing_partition_holders_under_load_loses_and_repeats_nothing(db_url, tmp_path):
    figures = run_kills(db_url, tmp_path, kills=2, workers=2, workflows_per_second=20)
    assert figures["max_takeover"] < 10


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killing_partition_holders_ten_times_under_heavier_load_loses_and_repeats_nothing(db_url, tmp_path):
    figures = run_kills(db_url, tmp_path, kills=10, workers=3, workflows_per_second=60)
    assert figures["max_takeover"] < 10
