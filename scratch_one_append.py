"""Issue 18 scratch bench: one append of one event with its command record, the general batch
statement (A: `_batch_sql(with_records=True)`, JSON rows + unnest guard + jsonb_agg) against a
statement specialised for exactly that case (B: typed parameters, a max(version) guard on the
one stream, the command_log row built from the one inserted row).

Both prepared like the product (`PreparedStatement.rows`, `SET LOCAL statement_timeout` prefix),
on one `DriverConnection` of an autocommit engine (each append its own durable transaction, as
the command bus sends it). Alternating blocks; per block: server CPU of the backend
(/proc/<pg_backend_pid()>/stat utime+stime), client CPU (os.times), wall, each per append.
R (reference, not in the ratio): a raw one-row INSERT into a copy of `events` (no triggers).

    createdb -h 127.0.0.1 -U postgres bench_oneappend
    CQRS_DATABASE_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/bench_oneappend \
        /work/main/.venv/bin/cqrs-console migrate
    PYTHONPATH=. /work/main/.venv/bin/python scratch_one_append.py [blocks] [appends_per_block]
    dropdb -h 127.0.0.1 -U postgres bench_oneappend
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

from cqrs_core.eventlog.store import CommandRecord, EventMetadata, EventStore, NewEvent, StreamAppend
from cqrs_core.infra.db import DriverConnection, make_engine

URL = os.environ.get("BENCH_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/bench_oneappend")
TICK = os.sysconf("SC_CLK_TCK")
STREAM_LEN = 10  # appends per stream: 1 in 10 at expected version 0, the rest at N > 0
RUN = uuid.uuid4().hex[:8]  # streams of this run (the database may hold an earlier run's)


def backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


class General(EventStore):
    """Always the general statement (what the product sends without the specialisation)."""

    def _append_batch(self, conn, appends, records, timeout_ms):  # type: ignore[override]
        return EventStore._append_general(self, conn, appends, records, timeout_ms)


class Special(EventStore):
    """The specialised statement for one append of one event (the product's `_append_batch`)."""


def payload(i: int) -> dict[str, Any]:
    return {
        "task_id": str(uuid.uuid4()),
        "result_summary": "Identified 412 candidate records; 37 met the inclusion criteria.",
        "attempt": i % 3 + 1,
    }


def one(store: EventStore, conn: DriverConnection, stream: str, expected: int, i: int) -> None:
    cmd, corr = uuid.uuid4(), uuid.uuid4()
    meta = EventMetadata(actor="bench", command_id=cmd, correlation_id=corr, causation_id=cmd)
    result = {
        "command_id": str(cmd),
        "command_type": "CompleteTask",
        "aggregate_id": stream,
        "events": [],
        "position": 0,
        "correlation_id": str(corr),
        "duration_ms": 0.412,
        "fingerprint": "f" * 64,
    }
    store.append_batch(
        [StreamAppend(stream, expected, [NewEvent("TaskCompleted", payload(i))], meta)],
        conn=conn,
        records=[CommandRecord(cmd, "CompleteTask", stream, result)],
        timeout_ms=5000,
    )


def block(arm: str, stores: dict[str, EventStore], conn: DriverConnection, pid: int, b: int, n: int):
    dbapi = conn.connection.dbapi_connection
    payload_text = json.dumps(payload(0))
    raw_sql = (
        "INSERT INTO bench_raw_events (stream_id, version, event_type, payload, event_id, command_id, "
        "correlation_id, causation_id, actor) VALUES (%s, 1, 'TaskCompleted', %s, %s, %s, %s, %s, 'bench')"
    )
    t0, c0, s0 = time.perf_counter(), os.times(), backend_cpu(pid)
    if arm == "R":
        with dbapi.cursor() as cur:  # type: ignore[union-attr]
            for i in range(n):
                ids = [str(uuid.uuid4()) for _ in range(3)]
                cur.execute(raw_sql, (f"raw-{RUN}-{b}-{i}", payload_text, ids[0], ids[1], ids[2], ids[1]))
    else:
        store = stores[arm]
        for i in range(n):
            one(store, conn, f"wf-{RUN}-{arm}-{b}-{i // STREAM_LEN}", i % STREAM_LEN, i)
    wall = time.perf_counter() - t0
    c1, s1 = os.times(), backend_cpu(pid)
    client = (c1.user + c1.system) - (c0.user + c0.system)
    return {"server": (s1 - s0) / n * 1000, "client": client / n * 1000, "wall": wall / n * 1000}


def main() -> None:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    engine = make_engine(URL, pool_size=1, autocommit=True, pre_ping=False, coalesced_notify=True)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
        c.exec_driver_sql("CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)")
    stores: dict[str, EventStore] = {"A": General(engine), "B": Special(engine)}
    proxied = engine.raw_connection()
    conn = DriverConnection(engine, proxied)
    with proxied.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(
            "SELECT pg_backend_pid(), current_setting('synchronous_commit'), current_setting('fsync')"
        )
        pid, sync, fsync = cur.fetchone()
    print(f"backend {pid}, synchronous_commit={sync}, fsync={fsync}, {blocks} blocks x {n} appends")
    # Warm up: prepare both statements, fill caches.
    for arm in ("A", "B", "R"):
        block(arm, stores, conn, pid, -1, 200)
    res: dict[str, list[dict[str, float]]] = {"A": [], "B": [], "R": []}
    for b in range(blocks):
        order = ("A", "B", "R") if b % 2 == 0 else ("B", "A", "R")
        for arm in order:
            res[arm].append(block(arm, stores, conn, pid, b, n))
        a, bb = res["A"][-1], res["B"][-1]
        print(
            f"block {b:2d}: server A {a['server']:.4f} B {bb['server']:.4f} R {res['R'][-1]['server']:.4f} | "
            f"client A {a['client']:.4f} B {bb['client']:.4f} | wall A {a['wall']:.4f} B {bb['wall']:.4f} ms"
        )
    print("\nper append, ms: median [min..max] over blocks")
    for key in ("server", "client", "wall"):
        for arm in ("A", "B", "R"):
            vals = [r[key] for r in res[arm]]
            print(f"  {key:6s} {arm}: {statistics.median(vals):.4f} [{min(vals):.4f}..{max(vals):.4f}]")
        ratios = [b_[key] / a_[key] for a_, b_ in zip(res["A"], res["B"], strict=True) if a_[key]]
        print(
            f"  {key:6s} B/A paired: median {statistics.median(ratios):.3f} "
            f"[{min(ratios):.3f}..{max(ratios):.3f}]"
        )
    conn.release()
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
    engine.dispose()


if __name__ == "__main__":
    main()
