"""What every phase of the bench stands on: the sizes, the scratch database, the shared context
(engine, service, the workflows made so far, notes for the report), the client runner and the
percentiles, and the facts about the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import make_engine, redact, start_embedded_server, stop_embedded_server
from cqrs_core.infra.metrics import percentile
from cqrs_core.service import CQRSService
from cqrs_core.tools.bench.report import Machine
from cqrs_core.tools.workload.runners import traffic_service

BENCH_SEED = 20_240_601  # the same data set every run
BENCH_APPLICATION = "cqrs-bench"  # the application_name of the bench's own engine


@dataclass(frozen=True)
class Sizes:
    events: int  # appended before catch-up and rebuild
    raw_seconds: float
    command_seconds: float
    cold_samples: int
    warm_samples: int
    mixed_seconds: float
    mixed_threads: int
    lag_rate: float  # commands/s while projections run
    lag_seconds: float
    load_threads: int
    rounds: int  # alternations of raw inserts and commands
    scaled_workflows: int  # the list/search figures are measured again at this many workflows


QUICK = Sizes(
    events=5_000,
    raw_seconds=1.0,
    command_seconds=1.5,
    cold_samples=20,
    warm_samples=200,
    mixed_seconds=1.5,
    mixed_threads=4,
    lag_rate=100,
    lag_seconds=3,
    load_threads=4,
    rounds=2,
    scaled_workflows=8_000,
)
DEFAULT = Sizes(
    events=200_000,
    raw_seconds=5,
    command_seconds=5,
    cold_samples=200,
    warm_samples=2000,
    mixed_seconds=5,
    mixed_threads=4,
    lag_rate=1000,
    lag_seconds=10,
    load_threads=8,
    rounds=4,
    scaled_workflows=100_000,
)
FULL = Sizes(
    events=1_000_000,
    raw_seconds=10,
    command_seconds=10,
    cold_samples=500,
    warm_samples=5000,
    mixed_seconds=10,
    mixed_threads=4,
    lag_rate=1000,
    lag_seconds=30,
    load_threads=8,
    rounds=6,
    scaled_workflows=100_000,
)


class BenchContext:
    """What the phases share on the scratch database: its URL, the settings and sizes, an engine
    and a service with no rate limit, the ids of the workflows appended for the catch-up (the
    queries read them) and the notes for the report. With `pooled_url` (the same database through
    a pooler in transaction mode) the commands and queries go through the pooler; migrations, the
    raw-insert baseline and the projections keep `url`."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        sizes: Sizes,
        say: Callable[[str], None],
        pooled_url: str | None = None,
    ) -> None:
        self.url, self.settings, self.sizes, self.say = url, settings, sizes, say
        self.pooled_url = pooled_url
        self.engine: Engine = make_engine(url, pool_size=12, application_name=BENCH_APPLICATION)
        self.service: CQRSService = traffic_service(
            settings, self.traffic_url, pool_size=12, direct_url=url if pooled_url else None
        )
        self.workflow_ids: list[uuid.UUID] = []
        self.notes: list[str] = []

    @property
    def traffic_url(self) -> str:
        """Where commands and queries go: the pooler when the bench runs through one."""
        return self.pooled_url or self.url

    def close(self) -> None:
        self.service.close()
        self.engine.dispose()


def progress_printer(log: TextIO | None) -> Callable[[str], None]:
    """`say(line)`: one `bench: …` line on `log` per phase, or nothing without a log."""

    def say(line: str) -> None:
        if log is not None:
            log.write(f"bench: {line}\n")
            log.flush()

    return say


def through_pooler(pooler_url: str, db_url: str) -> str:
    """`pooler_url` naming the scratch database of `db_url` (the pooler must route any database
    name to the server, as pgbouncer's `*` entry does)."""
    return make_url(pooler_url).set(database=make_url(db_url).database).render_as_string(hide_password=False)


@contextmanager
def scratch_database(url: str | None, say: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """A database nobody else uses: a temporary embedded server, or a scratch database on `url`'s
    server; removed afterwards either way. Yields (its URL, where it is for the report)."""
    if url is None:
        data_dir = Path(tempfile.mkdtemp(prefix="cqrs-bench-"))
        say(f"starting a temporary embedded PostgreSQL server in {data_dir}")
        try:
            yield start_embedded_server(data_dir, "bench"), "temporary embedded server"
        finally:
            stop_embedded_server(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
        return
    name = f"cqrs_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        say(f"created scratch database {name}")
        try:
            yield make_url(url).set(database=name).render_as_string(hide_password=False), redact(url)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def run_clients(clients: int, seconds: float, client: Callable[[int, Callable[[], float]], None]) -> float:
    """Run `client(i, ready)` on `clients` threads. A client sets itself up, then calls `ready()`,
    which returns once every client is ready, with the time to stop (perf_counter). Returns the
    seconds from that start to the last client's end."""
    all_ready = threading.Barrier(clients + 1)
    go = threading.Event()
    deadline = [0.0]

    def ready() -> float:
        all_ready.wait()
        go.wait()
        return deadline[0]

    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            client(i, ready)
        except BaseException as exc:  # handed to the caller below; the other clients stop
            failures.append(exc)
            all_ready.abort()
            deadline[0] = 0.0
            go.set()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        all_ready.wait()
    begin = time.perf_counter()
    if not failures:
        deadline[0] = begin + seconds
    go.set()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - begin


def timings(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of `values`."""
    ordered = sorted(values)
    return percentile(ordered, 0.5), percentile(ordered, 0.95), percentile(ordered, 0.99)


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0


def machine_facts(ctx: BenchContext, where: str) -> Machine:
    """CPUs, memory, the PostgreSQL and Python versions, and the load at the start."""
    import psutil

    with ctx.engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
    return Machine(
        cpus=os.cpu_count() or 0,
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        postgresql=str(version).split()[0],
        python=platform.python_version(),
        platform=platform.platform(terse=True),
        database=where,
        load_average=load_average(),
        connections=(f"through the pooler at {redact(ctx.pooled_url)}" if ctx.pooled_url else "direct")
        + f", prepared statements {'on' if ctx.settings.prepares_statements(ctx.pooled_url is not None) else 'off'}",
    )
