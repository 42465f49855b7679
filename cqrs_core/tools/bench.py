"""`cqrs-console bench`: measured speed of every path, next to the physical limit of the machine.

Everything runs on a fresh, isolated database: a temporary embedded server (deleted afterwards),
or a scratch database on the server of `url`. The first figure is the baseline — a bare psycopg2
loop committing one row per transaction into a copy of `events` on the same server, in the same
run — so the command figures read as "how close to what this disk and CPU allow".

    report = run_bench(quick=True, full=False, events=None, url=None)
    print(format_report(report))
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg2
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import make_engine, migrate, redact, start_embedded_server, stop_embedded_server
from cqrs_core.infra.errors import CQRSError
from cqrs_core.infra.metrics import percentile
from cqrs_core.read.queries import Query, QueryFactory
from cqrs_core.service import CQRSService, CQRSServiceBuilder
from cqrs_core.write.commands import CommandFactory

BENCH_SEED = 20_240_601  # the same data set every run


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


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_gb: float
    postgresql: str
    python: str
    platform: str
    database: str  # where the bench ran: the temporary embedded server or a redacted URL
    load_average: float  # 1-minute load average at the start: other work on the machine skews every figure


@dataclass(frozen=True)
class RawInserts:
    clients: int
    rows: int
    seconds: float
    per_second: float


@dataclass(frozen=True)
class CommandThroughput:
    clients: int
    commands: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ratio_to_raw: float  # per_second / raw insert+commit per second with as many clients


@dataclass(frozen=True)
class CatchUp:
    events: int  # the whole log, from zero to head
    workflows: int
    append_seconds: float
    append_events_per_second: float
    seconds: float
    events_per_second: float


@dataclass(frozen=True)
class QueryLatency:
    query: str
    detail: str
    samples: int
    cold_p50_ms: float
    cold_p95_ms: float
    warm_p50_ms: float
    warm_p95_ms: float


@dataclass(frozen=True)
class MixedQueries:
    threads: int
    queries: int
    seconds: float
    per_second: float
    cache_hit_rate: float


@dataclass(frozen=True)
class LagUnderLoad:
    target_rate: float
    achieved_rate: float
    seconds: float
    samples: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    command_p99_ms: float


@dataclass(frozen=True)
class BenchReport:
    mode: str  # quick | default | full
    machine: Machine
    raw_inserts: list[RawInserts]
    commands: list[CommandThroughput]
    catch_up: CatchUp
    rebuild_seconds: dict[str, float]
    queries: list[QueryLatency]
    mixed_queries: MixedQueries
    lag: LagUnderLoad
    view_refresh_seconds: dict[str, float]
    seconds: float
    notes: list[str] = field(default_factory=list)
    scaled_workflows: int = 0  # workflow_summary rows when `scaled_queries` ran
    read_model_workflows: int = 0  # workflow_summary rows when the views and queries were measured
    scaled_queries: list[QueryLatency] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        """The report back from `to_dict()` (or `bench --json` output), e.g. to compare runs."""
        return cls(
            mode=d["mode"],
            machine=Machine(**d["machine"]),
            raw_inserts=[RawInserts(**r) for r in d["raw_inserts"]],
            commands=[CommandThroughput(**c) for c in d["commands"]],
            catch_up=CatchUp(**d["catch_up"]),
            rebuild_seconds=dict(d["rebuild_seconds"]),
            queries=[QueryLatency(**q) for q in d["queries"]],
            mixed_queries=MixedQueries(**d["mixed_queries"]),
            lag=LagUnderLoad(**d["lag"]),
            view_refresh_seconds=dict(d["view_refresh_seconds"]),
            seconds=d["seconds"],
            notes=list(d.get("notes", [])),
            scaled_workflows=d.get("scaled_workflows", 0),
            read_model_workflows=d.get("read_model_workflows", 0),
            scaled_queries=[QueryLatency(**q) for q in d.get("scaled_queries", [])],
        )


# ---------------------------------------------------------------- running it


def run_bench(
    quick: bool = False,
    full: bool = False,
    events: int | None = None,
    url: str | None = None,
    *,
    log: TextIO | None = None,
    settings: Settings | None = None,
) -> BenchReport:
    """Run every measurement on a fresh database and return the report. `quick` uses small
    sizes (under a minute), `full` large ones; `events` overrides the catch-up/rebuild size.
    `log` receives one line per phase."""
    sizes = QUICK if quick else FULL if full else DEFAULT
    if events is not None:
        sizes = Sizes(**{**asdict(sizes), "events": events})
    mode = "quick" if quick else "full" if full else "default"
    # Tuning knobs (checkpoint interval, cache, timeouts) come from the environment; the database
    # never does: a configured CQRS_READ_DATABASE_URL must not send the bench's reads elsewhere.
    settings = (settings or get_settings()).model_copy(
        update={"database_url": None, "read_database_url": None}
    )
    say = _say(log)
    started = time.perf_counter()
    with _scratch_database(url, say) as (db_url, where):
        migrate(db_url)
        bench = _Bench(db_url, settings, sizes, say)
        try:
            return bench.run(mode, where, started)
        finally:
            bench.close()


def _say(log: TextIO | None) -> Callable[[str], None]:
    def say(line: str) -> None:
        if log is not None:
            log.write(f"bench: {line}\n")
            log.flush()

    return say


@contextmanager
def _scratch_database(url: str | None, say: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """A database nobody else uses: a temporary embedded server, or a scratch database on `url`'s
    server; removed afterwards either way."""
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


def _run_clients(clients: int, seconds: float, client: Callable[[int, Callable[[], float]], None]) -> float:
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


def _timings(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return percentile(ordered, 0.5), percentile(ordered, 0.95), percentile(ordered, 0.99)


class _Bench:
    def __init__(self, url: str, settings: Settings, sizes: Sizes, say: Callable[[str], None]) -> None:
        self.url, self.settings, self.sizes, self.say = url, settings, sizes, say
        self.engine: Engine = make_engine(url, pool_size=12, application_name="cqrs-bench")
        self.service: CQRSService = (
            CQRSServiceBuilder(settings)
            .with_database_url(url)
            .with_migrations(False)
            .with_rate_limit(1e9, 10**9)
            .with_pool_size(12)
            .build()
        )
        self.workflow_ids: list[uuid.UUID] = []
        self.notes: list[str] = []

    def close(self) -> None:
        self.service.close()
        self.engine.dispose()

    def run(self, mode: str, where: str, started: float) -> BenchReport:
        from cqrs_core.projections import ProjectionManager

        machine = self._machine(where)
        one, four = self._write_path(1), self._write_path(4)
        raw, commands = [one[0], four[0]], [one[1], four[1]]
        manager = ProjectionManager(self.engine, self.settings)
        try:
            catch_up = self._catch_up(manager)
            with self.engine.connect() as conn:  # the catch-up's workflows and the command phases'
                listed = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
            rebuilds = self._rebuilds(manager)
            views = self._view_refresh(manager)
            self._vacuum()
            queries = self._query_latency()
            mixed = self._mixed_queries()
            lag = self._lag_under_load(manager)
        finally:
            manager.close()
        scaled, scaled_queries = self._scaled_queries()
        notes = self.notes
        if lag.achieved_rate < 0.9 * lag.target_rate:
            notes.append(
                f"the command load reached {lag.achieved_rate:,.0f} of the {lag.target_rate:,.0f} "
                "commands/s asked for; the lag figure is for that rate"
            )
        return BenchReport(
            mode,
            machine,
            raw,
            commands,
            catch_up,
            rebuilds,
            queries,
            mixed,
            lag,
            views,
            time.perf_counter() - started,
            notes,
            scaled_workflows=scaled,
            scaled_queries=scaled_queries,
            read_model_workflows=listed,
        )

    # ------------------------------------------------------------ the machine

    def _machine(self, where: str) -> Machine:
        import psutil

        with self.engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        return Machine(
            cpus=os.cpu_count() or 0,
            memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
            postgresql=str(version).split()[0],
            python=platform.python_version(),
            platform=platform.platform(terse=True),
            database=where,
            load_average=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
        )

    # ------------------------------------------------------------ raw insert+commit

    def _write_path(self, clients: int) -> tuple[RawInserts, CommandThroughput]:
        """The raw baseline and the commands with `clients` clients, measured in alternating
        rounds so that a slow spell of the disk or a busy neighbour weighs on both alike."""
        rounds = self.sizes.rounds
        raw_rows = raw_seconds = 0.0
        commands = errors = 0
        command_seconds = 0.0
        latencies: list[float] = []
        self._create_raw_table()
        try:
            for _ in range(rounds):
                rows, seconds = self._raw_round(clients, self.sizes.raw_seconds / rounds)
                raw_rows, raw_seconds = raw_rows + rows, raw_seconds + seconds
                count, failed, seconds, timings = self._command_round(
                    clients, self.sizes.command_seconds / rounds
                )
                commands, errors, command_seconds = (
                    commands + count,
                    errors + failed,
                    command_seconds + seconds,
                )
                latencies += timings
        finally:
            with self.engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
        raw = RawInserts(clients, int(raw_rows), raw_seconds, raw_rows / raw_seconds)
        p50, p95, p99 = _timings(latencies)
        per_second = commands / command_seconds
        figure = CommandThroughput(
            clients,
            commands,
            errors,
            command_seconds,
            per_second,
            p50,
            p95,
            p99,
            per_second / raw.per_second if raw.per_second else 0.0,
        )
        self.say(
            f"{clients} client(s): raw insert+commit {raw.per_second:,.0f}/s, commands {per_second:,.0f}/s "
            f"(p99 {p99:.1f} ms)"
        )
        return raw, figure

    def _create_raw_table(self) -> None:
        # Same columns, defaults, indexes and constraints as `events`; no triggers.
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_raw_events")
            conn.exec_driver_sql("CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)")

    def _raw_round(self, clients: int, seconds: float) -> tuple[int, float]:
        """One row per transaction, each client on its own bare psycopg2 connection in autocommit
        mode: one round trip and one WAL flush per row, the fewest a durable write can take."""
        u = make_url(self.url)
        dsn = {**u.translate_connect_args(username="user", database="dbname"), **dict(u.query)}
        payload = json.dumps(
            {
                "task_id": str(uuid.uuid4()),
                "result_summary": "Identified 412 candidate records; 37 met the inclusion criteria.",
                "attempt": 1,
            }
        )
        sql = (
            "INSERT INTO bench_raw_events (stream_id, version, event_type, payload, event_id, command_id, "
            "correlation_id, causation_id, actor) VALUES (%s, 1, 'TaskCompleted', %s, %s, %s, %s, %s, 'bench')"
        )
        counts = [0] * clients

        def client(i: int, ready: Callable[[], float]) -> None:
            conn = psycopg2.connect(**dsn)
            conn.autocommit = True
            try:
                cur = conn.cursor()
                deadline = ready()
                n = 0
                while time.perf_counter() < deadline:
                    ids = [str(uuid.uuid4()) for _ in range(3)]
                    cur.execute(sql, (f"raw-{uuid.uuid4()}", payload, ids[0], ids[1], ids[2], ids[1]))
                    n += 1
                counts[i] = n
            finally:
                conn.close()

        elapsed = _run_clients(clients, seconds, client)
        return sum(counts), elapsed

    def _command_round(self, clients: int, seconds: float) -> tuple[int, int, float, list[float]]:
        """create-workflow then two add-task commands, repeated, by each client for `seconds`.
        Returns (commands, errors, seconds, latencies in ms)."""
        latencies: list[list[float]] = [[] for _ in range(clients)]
        counts, errors = [0] * clients, [0] * clients

        def client(i: int, ready: Callable[[], float]) -> None:
            factory = CommandFactory(actor=f"bench-{i}", role="researcher")
            self.service.execute_command(next(self._workflow_commands(factory)))  # opens a pooled connection
            deadline = ready()
            while True:
                for cmd in self._workflow_commands(factory):
                    if time.perf_counter() >= deadline:
                        return
                    t0 = time.perf_counter()
                    try:
                        self.service.execute_command(cmd)
                    except CQRSError:
                        errors[i] += 1
                    latencies[i].append((time.perf_counter() - t0) * 1000)
                    counts[i] += 1

        elapsed = _run_clients(clients, seconds, client)
        return sum(counts), sum(errors), elapsed, [ms for mine in latencies for ms in mine]

    def _workflow_commands(self, factory: CommandFactory) -> Iterator[Any]:
        workflow_id = uuid.uuid4()
        yield factory.create_research_workflow(
            workflow_id=workflow_id,
            title="Bench: effect of peer instruction on course completion",
            research_question="Does peer instruction improve course completion among first-year students?",
            methodology="experimental",
            tags=["bench", "education"],
        )
        for name in ("Run participant survey", "Fit mixed-effects model"):
            yield factory.add_task(
                workflow_id=workflow_id, name=name, kind="analysis", assignee="stats-agent"
            )

    # ------------------------------------------------------------ projections

    def _append_events(self) -> tuple[int, int, float]:
        """Append about `sizes.events` events of generated workflows straight through
        EventStore.append: one append per workflow (its whole lifecycle), many per transaction.
        The aggregate decides every event, exactly as the command bus would."""
        from cqrs_core.domain.events import stream_id_for
        from cqrs_core.domain.workflow import ResearchWorkflow
        from cqrs_core.eventlog.store import EventMetadata, NewEvent
        from cqrs_core.tools.workload import WorkloadGenerator
        from cqrs_core.write.handlers import decide

        generator = WorkloadGenerator(BENCH_SEED, days=365, max_task_attempts=self.settings.max_task_attempts)
        store = self.service.event_store
        appended = workflows = 0
        began = time.perf_counter()
        while appended < self.sizes.events:
            with self.engine.begin() as conn:
                in_batch = 0
                while in_batch < 5000 and appended < self.sizes.events:
                    plan = generator.workflow()
                    wf = ResearchWorkflow(str(plan.workflow_id))
                    decided = []
                    for cmd in plan.commands:
                        for event in decide(wf, cmd, self.settings):
                            wf.apply(event)
                            decided.append(
                                NewEvent(event.event_type, event.to_payload(), event.schema_version)
                            )
                    first = plan.commands[0]
                    store.append(
                        stream_id_for(str(plan.workflow_id)),
                        0,
                        decided,
                        EventMetadata(
                            actor=plan.owner,
                            command_id=first.command_id,
                            correlation_id=first.correlation_id,
                            occurred_at=first.occurred_at,
                        ),
                        conn=conn,
                    )
                    self.workflow_ids.append(plan.workflow_id)
                    appended += len(decided)
                    in_batch += len(decided)
                    workflows += 1
        return appended, workflows, time.perf_counter() - began

    def _catch_up(self, manager: Any) -> CatchUp:
        appended, workflows, append_seconds = self._append_events()
        self.say(f"appended {appended:,} events ({workflows:,} workflows) in {append_seconds:.1f} s")
        head = self.service.event_store.head()
        began = time.perf_counter()
        manager.catch_up()
        seconds = time.perf_counter() - began
        self._check_read_models(manager, head)
        figure = CatchUp(head, workflows, append_seconds, appended / append_seconds, seconds, head / seconds)
        self.say(
            f"catch-up of all projections over {head:,} events: {figure.events_per_second:,.0f} events/s"
        )
        return figure

    def _check_read_models(self, manager: Any, head: int) -> None:
        """A fast catch-up that skipped events would be a wrong figure: say so in the report."""
        with self.engine.connect() as conn:
            listed = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
            streams = conn.execute(text("SELECT count(DISTINCT stream_id) FROM events")).scalar_one()
        for s in manager.status():
            if s.events_applied != head or s.lag_events or s.parked:
                self.notes.append(
                    f"{s.name} applied {s.events_applied:,} of {head:,} events "
                    f"({s.lag_events:,} still pending, {s.parked:,} parked, state {s.state})"
                )
        if listed != streams:
            self.notes.append(f"workflow_summary lists {listed:,} of the {streams:,} workflows in the log")
        for note in self.notes:
            self.say(f"warning: {note}")

    def _rebuilds(self, manager: Any) -> dict[str, float]:
        from cqrs_core.projections import PROJECTION_NAMES

        out = {}
        for name in PROJECTION_NAMES:
            began = time.perf_counter()
            result = manager.rebuild(name)
            out[name] = time.perf_counter() - began
            if not result.finished:
                raise CQRSError(f"The rebuild of {name} did not finish.")
            self.say(f"rebuild {name}: {out[name]:.2f} s")
        return out

    def _view_refresh(self, manager: Any) -> dict[str, float]:
        refreshed = {r.view_name: (r.duration_ms or 0.0) / 1000 for r in manager.refresh_views()}
        self.say("view refresh: " + ", ".join(f"{v} {s:.2f} s" for v, s in refreshed.items()))
        return refreshed

    # ------------------------------------------------------------ queries

    def _vacuum(self) -> None:
        """VACUUM ANALYZE, as autovacuum would soon after a bulk load: fresh statistics for the
        planner and a visibility map for index-only scans. Without it, cold figures right after
        the rebuilds swing from run to run."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")

    def _query_latency(self) -> list[QueryLatency]:
        qf = QueryFactory()
        rng = random.Random(BENCH_SEED)
        ids = self.workflow_ids or [uuid.uuid4()]
        cases: list[tuple[str, str, Callable[[int], Query]]] = [
            (
                "get_workflow",
                "one workflow with its tasks and activity",
                lambda i: qf.get_workflow(rng.choice(ids)),
            ),
            *self._list_cases(),
            ("statistics", "every statistics view", lambda i: qf.get_statistics()),
        ]
        return self._latencies(cases, "")

    def _list_cases(self) -> list[tuple[str, str, Callable[[int], Query]]]:
        qf = QueryFactory()
        everything = self.service.execute_query(qf.get_workflow_list(page_size=20), cache=False)
        pages = max(1, math.ceil(everything.total / 20))
        deep = min(500, pages)
        terms = [
            "mindfulness anxiety",
            "carbon pricing",
            "randomised trial",
            "privacy",
            "school meal programmes",
        ]
        return [
            (
                "list_page",
                "status + methodology filters, sorted by last activity",
                lambda i: qf.get_workflow_list(
                    status=["running", "completed"],
                    methodology=["systematic_review", "exploratory", "experimental"],
                    sort="last_activity_at",
                    page=1 + i % 3,
                    page_size=20,
                ),
            ),
            (
                "deep_page",
                f"page {deep:,} of {pages:,} (page size 20)",
                lambda i: qf.get_workflow_list(page=deep, page_size=20),
            ),
            (
                "search",
                "full text, ranked, with snippets",
                lambda i: qf.search_workflows(terms[i % len(terms)]),
            ),
        ]

    def _latencies(
        self, cases: list[tuple[str, str, Callable[[int], Query]]], label: str
    ) -> list[QueryLatency]:
        out = []
        for name, detail, make in cases:
            cold = []
            for i in range(self.sizes.cold_samples):
                query = make(i)
                t0 = time.perf_counter()
                self.service.execute_query(query, cache=False)
                cold.append((time.perf_counter() - t0) * 1000)
            query = make(0)
            self.service.execute_query(query)  # fills the cache
            warm = []
            for _ in range(self.sizes.warm_samples):
                t0 = time.perf_counter()
                self.service.execute_query(query)
                warm.append((time.perf_counter() - t0) * 1000)
            c50, c95, _ = _timings(cold)
            w50, w95, _ = _timings(warm)
            out.append(QueryLatency(name, detail, len(cold), c50, c95, w50, w95))
            self.say(f"query {name}{label}: cold p50 {c50:.2f} / p95 {c95:.2f} ms, warm p50 {w50:.3f} ms")
        return out

    def _scaled_queries(self) -> tuple[int, list[QueryLatency]]:
        """The list, deep-page and search figures again with `sizes.scaled_workflows` rows in
        workflow_summary: the projected rows copied under new ids (same texts, statuses and dates),
        then VACUUM ANALYZE. Runs last: the copies have no events behind them."""
        target = self.sizes.scaled_workflows
        with self.engine.begin() as conn:
            have = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
            columns = [
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = 'workflow_summary' "
                        "AND table_schema = current_schema() AND is_generated = 'NEVER' ORDER BY ordinal_position"
                    )
                )
            ]
            if have and target > have:
                copied = ", ".join("gen_random_uuid()" if c == "workflow_id" else c for c in columns)
                conn.execute(
                    text(
                        f"INSERT INTO workflow_summary ({', '.join(columns)}) "
                        f"SELECT {copied} FROM workflow_summary, generate_series(1, :copies) LIMIT :needed"
                    ),
                    {"copies": math.ceil((target - have) / have), "needed": target - have},
                )
        self._vacuum()
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one()
        self.service.query_bus.cache.invalidate("")
        return rows, self._latencies(self._list_cases(), f" at {rows:,} workflows")

    def _mixed_queries(self) -> MixedQueries:
        """A few threads reading what the pages read, through the cache, for a fixed time."""
        qf = QueryFactory()
        ids = self.workflow_ids[:5000] or [uuid.uuid4()]
        statuses = [None, ["running"], ["completed"], ["failed", "cancelled"], ["draft", "paused"]]
        sorts = ["created_at", "last_activity_at", "progress_pct", "title"]
        terms = [
            "anxiety",
            "carbon pricing",
            "randomised trial",
            "students",
            "privacy",
            "hospital readmissions",
            "cash transfers",
            "peer support",
            "air quality",
            "model accuracy",
        ]

        def pick(rng: random.Random) -> Query:
            # What the pages ask for, skewed as people are: a few workflows and the first pages are
            # read far more often than the rest.
            r = rng.random()
            if r < 0.4:
                return qf.get_workflow(ids[int(len(ids) * rng.random() ** 3)])
            if r < 0.7:
                return qf.get_workflow_list(
                    status=rng.choice(statuses),
                    sort=rng.choice(sorts),
                    page=1 + int(10 * rng.random() ** 2),
                    page_size=20,
                )
            if r < 0.85:
                return qf.search_workflows(rng.choice(terms))
            return qf.get_statistics() if r < 0.95 else qf.get_overview()

        before = self.service.query_bus.cache.snapshot()
        counts = [0] * self.sizes.mixed_threads
        stop_at = time.perf_counter() + self.sizes.mixed_seconds

        def reader(i: int) -> None:
            rng = random.Random(i)
            while time.perf_counter() < stop_at:
                self.service.execute_query(pick(rng))
                counts[i] += 1

        began = time.perf_counter()
        threads = [
            threading.Thread(target=reader, args=(i,), daemon=True) for i in range(self.sizes.mixed_threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - began
        after = self.service.query_bus.cache.snapshot()
        hits, misses = after.hits - before.hits, after.misses - before.misses
        total = sum(counts)
        figure = MixedQueries(
            self.sizes.mixed_threads,
            total,
            seconds,
            total / seconds,
            hits / (hits + misses) if hits + misses else 0.0,
        )
        self.say(f"mixed queries: {figure.per_second:,.0f}/s (cache hit rate {figure.cache_hit_rate:.0%})")
        return figure

    # ------------------------------------------------------------ lag under load

    def _lag_under_load(self, manager: Any) -> LagUnderLoad:
        """Steady commands at a fixed rate while a ProjectionRuntime runs the projections;
        the worst projection's lag (age of its oldest unapplied event) sampled every 100 ms.

        The load comes from a separate process, as users' commands come from the app's processes:
        sent from this one, its threads would compete with the projections for the GIL and the
        figure would measure that contention rather than the projections."""
        import multiprocessing

        from cqrs_core.projections.engine.runtime import ProjectionRuntime

        # The runtime takes over the manager (and the projections' advisory locks it holds).
        runtime = ProjectionRuntime(self.engine, self.settings, manager=manager)
        runtime.start()
        samples: list[float] = []
        ctx = multiprocessing.get_context("spawn")
        results, go = ctx.Queue(), ctx.Event()
        loader = ctx.Process(
            target=_load_process,
            name="bench-load",
            daemon=True,
            args=(
                self.url,
                self.settings,
                self.sizes.lag_rate,
                self.sizes.lag_seconds,
                self.sizes.load_threads,
                BENCH_SEED + 1,
                results,
                go,
            ),
        )
        loader.start()
        report: Any = None
        try:
            deadline = time.monotonic() + 30
            while max(s.lag_events for s in manager.status()) and time.monotonic() < deadline:
                time.sleep(0.1)
            ready = results.get(timeout=120)  # the child has built its service and opened its pool
            if ready != "ready":
                raise CQRSError(f"The load process failed to start: {ready}")
            go.set()
            while report is None:
                tick = time.perf_counter()
                samples.append(max(s.lag_seconds for s in manager.status()) * 1000)
                with contextlib.suppress(queue.Empty):
                    report = results.get(timeout=max(0.0, 0.1 - (time.perf_counter() - tick)))
                if report is None and not loader.is_alive() and results.empty():
                    raise CQRSError("The load process ended without a report.")
        finally:
            go.set()
            loader.join(timeout=30)
            if loader.is_alive():
                loader.kill()
            runtime.stop()
        if isinstance(report, str):
            raise CQRSError(f"The command load failed: {report}")
        p50, p95, _ = _timings(samples)
        load_average = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0
        figure = LagUnderLoad(
            self.sizes.lag_rate,
            report.achieved_rate,
            report.elapsed_seconds,
            len(samples),
            p50,
            p95,
            max(samples, default=0.0),
            report.p99_ms,
        )
        self.say(
            f"lag under {figure.achieved_rate:,.0f} commands/s: p95 {p95:.0f} ms, max {figure.max_ms:.0f} ms "
            f"(load average {load_average:g})"
        )
        return figure


def _load_process(
    url: str, settings: Settings, rate: float, seconds: float, threads: int, seed: int, results: Any, go: Any
) -> None:
    """The bench's command load, in a process of its own: build a service, say "ready", wait for
    `go`, run the steady load and send back its LoadReport (or one line saying what failed)."""
    from cqrs_core.tools.workload import run_steady_load

    try:
        service = (
            CQRSServiceBuilder(settings)
            .with_database_url(url)
            .with_migrations(False)
            .with_rate_limit(1e9, 10**9)
            .with_pool_size(threads + 2)
            .build()
        )
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(f"{type(exc).__name__}: {exc}")
        return
    try:
        results.put("ready")
        go.wait()
        results.put(run_steady_load(service, rate=rate, duration=seconds, threads=threads, seed=seed))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(f"{type(exc).__name__}: {exc}")
    finally:
        service.close()


# ---------------------------------------------------------------- printing

TARGETS = {
    "commands_1": "≥ 75 % of raw, p99 ≤ 5 ms",
    "catch_up": "≥ 30,000 events/s",
    "rebuild": "1,000,000 events ≤ 30 s",
    "lag": "≤ 200 ms at 1,000 commands/s",
    "warm": "warm p50 ≤ 0.2 ms",
    "list_page": "cold p95 ≤ 10 ms at 100,000 workflows",
    "search": "p95 ≤ 30 ms",
    "mixed": "≥ 5,000 queries/s",
}


def _query_row(figure: str, q: QueryLatency, size: str, target: str) -> tuple[str, str, str, str]:
    return (
        figure,
        f"{q.cold_p50_ms:.2f} / {q.cold_p95_ms:.2f} ms",
        f"cold p50 / p95 ({q.samples} samples); warm p50 {q.warm_p50_ms:.3f} · p95 {q.warm_p95_ms:.3f} ms;"
        f" {q.detail}{size}",
        target,
    )


def format_report(report: BenchReport) -> str:
    """The report as a plain-text table (figure, value, detail, target)."""
    m = report.machine
    rows: list[tuple[str, str, str, str]] = []
    for r in report.raw_inserts:
        rows.append(
            (
                f"raw insert+commit, {r.clients} client{'s' if r.clients > 1 else ''}",
                f"{r.per_second:,.0f}/s",
                f"{r.rows:,} rows in {r.seconds:.1f} s (bare psycopg2, autocommit, copy of events)",
                "the physical limit",
            )
        )
    for c in report.commands:
        rows.append(
            (
                f"commands, {c.clients} client{'s' if c.clients > 1 else ''}",
                f"{c.per_second:,.0f}/s",
                f"p50 {c.p50_ms:.2f} · p95 {c.p95_ms:.2f} · p99 {c.p99_ms:.2f} ms; "
                f"{c.ratio_to_raw:.0%} of raw" + (f"; {c.errors} errors" if c.errors else ""),
                TARGETS["commands_1"] if c.clients == 1 else "",
            )
        )
    cu = report.catch_up
    rows.append(
        (
            "projection catch-up",
            f"{cu.events_per_second:,.0f} events/s",
            f"{cu.events:,} events ({cu.workflows:,} workflows) in {cu.seconds:.1f} s, all projections; "
            f"appended at {cu.append_events_per_second:,.0f} events/s",
            TARGETS["catch_up"],
        )
    )
    for name, seconds in report.rebuild_seconds.items():
        rows.append(
            (
                f"rebuild {name}",
                f"{seconds:.2f} s",
                f"{cu.events:,} events ({cu.events / seconds:,.0f} events/s)" if seconds else "",
                TARGETS["rebuild"],
            )
        )
    scaled = {q.query for q in report.scaled_queries}
    listed = report.read_model_workflows or cu.workflows
    for q in report.queries:
        target = "" if q.query in scaled else TARGETS.get(q.query, "")  # the targets name the scaled size
        rows.append(
            _query_row(
                f"query {q.query}",
                q,
                f" ({listed:,} workflows)",
                "; ".join(t for t in (target, TARGETS["warm"]) if t),
            )
        )
    for q in report.scaled_queries:
        rows.append(
            _query_row(
                f"query {q.query}, {report.scaled_workflows:,} workflows", q, "", TARGETS.get(q.query, "")
            )
        )
    mq = report.mixed_queries
    rows.append(
        (
            "mixed queries, cache on",
            f"{mq.per_second:,.0f}/s",
            f"{mq.threads} threads, {mq.queries:,} queries, cache hit rate {mq.cache_hit_rate:.0%}",
            TARGETS["mixed"],
        )
    )
    lg = report.lag
    rows.append(
        (
            "lag p95 under load",
            f"{lg.p95_ms:,.0f} ms",
            f"{lg.achieved_rate:,.0f} of {lg.target_rate:,.0f} commands/s for {lg.seconds:.0f} s; "
            f"p50 {lg.p50_ms:,.0f} · max {lg.max_ms:,.0f} ms over {lg.samples} samples; "
            f"command p99 {lg.command_p99_ms:.1f} ms",
            TARGETS["lag"],
        )
    )
    for view, seconds in report.view_refresh_seconds.items():
        rows.append((f"refresh {view}", f"{seconds:.3f} s", f"at {listed:,} workflows", ""))

    widths = [max(len(r[i]) for r in rows + [("figure", "value", "detail", "target")]) for i in range(4)]
    lines = [
        f"cqrs-console bench ({report.mode}) — {report.seconds:.0f} s",
        f"machine: {m.cpus} CPUs, {m.memory_gb:g} GB RAM, PostgreSQL {m.postgresql}, Python {m.python}, {m.platform}; "
        f"load average {m.load_average:g} at the start",
        f"database: {m.database}",
        "",
    ]
    header = ("figure", "value", "detail", "target")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2]), row[3]]
            ).rstrip()
        )
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
