"""The scale-out deployment of docs/DEPLOY.md on one machine, every part a real process (issue 19,
part 6): a PostgreSQL primary and its streaming hot standby (tests/replication.py), pgbouncer in
transaction-pooling mode in front of the primary (deploy/pgbouncer.ini, pooling.py), two
`cqrs-console worker` processes on the direct URL, two `cqrs-console serve` processes with
CQRS_PROJECTIONS_IN=none behind HAProxy (deploy/haproxy.cfg, deployment.py), and Chromium
talking to the proxy over TLS.

Every process gets the environment docs/DEPLOY.md gives it: CQRS_DATABASE_URL through pgbouncer as
a login that is only a member of cqrs_app, CQRS_DIRECT_DATABASE_URL to the primary as its owner,
CQRS_READ_DATABASE_URL to the standby, one cookie secret, a metrics port of its own. The first
worker starts alone and takes every projection; the second stands by.

Checked: each process talks to the servers its settings name and no others; a workflow created in
the browser is applied by the one worker holding the projections and read back from the standby
(the detail opens at once: read-your-writes); after kill -9 of that worker the other takes over
and applies a new command, which the standby serves; after kill -9 of an app process HAProxy
keeps answering and a signed-in person who reloads lands on the other process, still signed in.
The take-over times are printed (run with -s).

Skipped like the other infrastructure tests: on the PostgreSQL 15 pass (the fixtures build their
own embedded servers), without pgbouncer, HAProxy or openssl (failures under CQRS_REQUIRE_INFRA=1)
and without Chromium (a failure under CQRS_REQUIRE_E2E=1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from deployment import (
    App,
    Proxy,
    console_env,
    evidence_on_failure,
    new_context,
    open_and_sign_in,
    serve_apps,
    served_by,
    start_proxy,
    started,
    wait_until_idle,
    write_users,
)
from fault_tools import assert_exactly_once, owner_of, owners, runner_lock_holders
from pooling import PgBouncer, start_pgbouncer
from replication import ReplicaDatabase, ReplicatedCluster
from server_processes import stop_process_group
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool
from test_serving import free_port
from waiting import wait_until

from cqrs_core import CommandFactory, CommandResult, CQRSServiceBuilder, QueryFactory
from cqrs_core.infra import db
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import ReplicaUnavailableError, StaleReadError
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.service import CQRSService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUNTIME_LOGIN = db.EMBEDDED_RUNTIME_LOGIN  # the pooled login: a member of cqrs_app, no rights of its own
START_TIMEOUT = 60.0
TAKEOVER_BOUND = 10.0  # seconds from kill -9 of the holder to the standby worker holding every projection
APPLIED_BOUND = 20.0  # seconds from kill -9 to a command sent after it being read back from the standby
PROXY_OUTAGE_BOUND = 10.0  # seconds after kill -9 of an app process in which every health request must answer
LOCK_SESSIONS_LIKE = "%projection locks%"  # the runner-lock session of a worker (locks.py)


@dataclass
class Topology:
    cluster: ReplicatedCluster
    database: ReplicaDatabase
    bouncer: PgBouncer
    direct_url: str  # the primary itself, as its owner (migrations, the workers' locks and LISTEN)
    pooled_url: str  # through pgbouncer, as the runtime login
    replica_url: str  # the standby, as the runtime login
    workers: list[subprocess.Popen]  # in the order they started: the first holds the projections
    apps: list[App]
    proxy: Proxy
    metrics_ports: dict[int, int]  # pid: its metrics port
    observer: Engine  # a direct engine of the test's own on the primary
    start_worker: Callable[[], subprocess.Popen]  # one more `cqrs-console worker`, appended to `workers`

    def service(self) -> CQRSService:
        """A service built from the app processes' settings (commands through pgbouncer, queries
        on the standby); with CQRS_READ_REPLICA_FALLBACK=error, so an answer came from the standby."""
        settings = load_settings(
            database_url=self.pooled_url,
            direct_database_url=self.direct_url,
            read_database_url=self.replica_url,
            read_replica_fallback="error",
        )
        return CQRSServiceBuilder(settings).with_migrations(False).with_pool_size(2).build()

    def connections(self, pid: int) -> Counter[str]:
        """Process `pid`'s open connections to each of the topology's servers."""
        named = {
            self.bouncer.port: "pgbouncer",
            self.cluster.primary.port: "primary",
            self.cluster.standby.port: "standby",
        }
        return Counter(
            named[c.raddr.port]
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.ip == "127.0.0.1" and c.raddr.port in named and c.status == "ESTABLISHED"
        )

    def servers_reached(self, pid: int) -> set[str]:
        """Which of the topology's servers process `pid` has an open connection to."""
        return set(self.connections(pid))


def with_user(url: str, user: str) -> str:
    return url.replace("postgresql+psycopg2://postgres@", f"postgresql+psycopg2://{user}@", 1)


@pytest.fixture(scope="module")
def topology(
    pgbouncer, haproxy, openssl, chromium, replicated_cluster, tmp_path_factory
) -> Iterator[Topology]:
    """Everything of the module docstring, stopped afterwards whatever happened."""
    root = tmp_path_factory.mktemp("topology")
    logs = root / "logs"
    logs.mkdir()
    write_users(root, "researcher")
    replicated_cluster.ready()
    database = replicated_cluster.create_database()
    observer = create_engine(database.primary_url, poolclass=NullPool)
    with ExitStack() as stack:
        stack.callback(replicated_cluster.drop_database, database.name)
        stack.callback(replicated_cluster.ready)  # a stopped or paused standby would not see the drop
        stack.callback(observer.dispose)
        # The pooled login: a member of cqrs_app with no rights of its own (README, pooler).
        db.ensure_login_role(database.primary_url, RUNTIME_LOGIN, db.RUNTIME_ROLE)
        bouncer = start_pgbouncer(
            pgbouncer,
            root / "pgbouncer",
            stack,
            server=("127.0.0.1", str(replicated_cluster.primary.port)),
            users=[RUNTIME_LOGIN],
            pgdata=replicated_cluster.primary.pgdata,
            server_database=database.name,
        )
        pooled_url = bouncer.url(RUNTIME_LOGIN)
        replica_url = with_user(database.standby_url, RUNTIME_LOGIN)
        # The environment file every process shares (docs/DEPLOY.md); each adds its metrics port.
        env = console_env(root, pooled_url, cookie_secret=uuid.uuid4().hex + uuid.uuid4().hex)
        env.update(
            CQRS_DIRECT_DATABASE_URL=database.primary_url,
            CQRS_READ_DATABASE_URL=replica_url,
            CQRS_PROJECTIONS_IN="none",
        )
        migrate = subprocess.run(
            [sys.executable, "-m", "cqrs_core", "migrate"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr

        metrics_ports: dict[int, int] = {}
        workers: list[subprocess.Popen] = []

        def start_worker() -> subprocess.Popen:
            """`cqrs-console worker` with the shared environment and a metrics port of its own;
            returns once it holds or polls the runner locks."""
            port = free_port()
            log = logs / f"worker{len(workers) + 1}.log"
            worker = started(
                [sys.executable, "-m", "cqrs_core", "worker"],
                root,
                {**env, "CQRS_METRICS_PORT": str(port)},
                log,
            )
            stack.callback(stop_process_group, worker)
            workers.append(worker)
            metrics_ports[worker.pid] = port
            wait_for_process(
                worker,
                log,
                lambda: polls_the_locks(observer, worker),
                f"worker {len(workers)} to take or poll the runner locks",
            )
            return worker

        first = start_worker()  # alone, it takes every projection
        wait_for_process(
            first,
            logs / "worker1.log",
            lambda: holds_every_projection(observer, first),
            "the first worker to hold every projection",
        )
        start_worker()  # the second one finds them held and stands by, polling the locks

        envs = [{**env, "CQRS_METRICS_PORT": str(free_port())} for _ in (1, 2)]
        apps = serve_apps(stack, root, envs, logs)
        for app, app_env in zip(apps, envs, strict=True):
            metrics_ports[app.pid] = int(app_env["CQRS_METRICS_PORT"])
        proxy = start_proxy(stack, haproxy, openssl, root, logs, apps)
        print(f"logs of the topology: {logs}")
        yield Topology(
            cluster=replicated_cluster,
            database=database,
            bouncer=bouncer,
            direct_url=database.primary_url,
            pooled_url=pooled_url,
            replica_url=replica_url,
            workers=workers,
            apps=apps,
            proxy=proxy,
            metrics_ports=metrics_ports,
            observer=observer,
            start_worker=start_worker,
        )


def wait_for_process(process: subprocess.Popen, log: Path, predicate: Callable[[], bool], what: str) -> None:
    """Until `predicate()`; fails with the log of `process` if it exits first."""

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(
                f"{process.args} exited with {process.returncode}:\n{log.read_text()[-3000:]}",
                pytrace=False,
            )
        return predicate()

    wait_until(ready, START_TIMEOUT, what, interval=0.2)


# ---------------------------------------------------------------- who talks to whom


def local_ports(pid: int, observer: Engine) -> set[int]:
    """The local TCP ports of process `pid`'s connections to the server `observer` connects to
    (what that server's pg_stat_activity calls their client_port)."""
    server = observer.url.port
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.raddr and c.raddr.port == server
    }


def client_ports(engine: Engine, backends: list[int]) -> dict[int, int]:
    """backend pid: the client's TCP port, from the primary's pg_stat_activity."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT pid, client_port FROM pg_stat_activity WHERE pid = ANY(:pids)"), {"pids": backends}
        ).all()
    return {row.pid: row.client_port for row in rows}


def lock_sessions(observer: Engine) -> list[int]:
    """Backend pids of the sessions that hold or poll the projections' runner locks."""
    with observer.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name LIKE :name"
                ),
                {"name": LOCK_SESSIONS_LIKE},
            ).scalars()
        )


def polls_the_locks(observer: Engine, worker: subprocess.Popen) -> bool:
    """Whether `worker` has its runner-lock session open (it holds or polls the locks)."""
    mine = local_ports(worker.pid, observer)
    return any(port in mine for port in client_ports(observer, lock_sessions(observer)).values())


def holds_every_projection(observer: Engine, worker: subprocess.Popen) -> bool:
    """Every runner lock is held, each by one session, and that session is `worker`'s (matched by
    its TCP port); the projections' owner rows name it too."""
    holders = runner_lock_holders(observer)
    if set(holders) != set(PROJECTION_NAMES) or any(len(pids) != 1 for pids in holders.values()):
        return False
    backends = sorted({pids[0] for pids in holders.values()})
    ports = client_ports(observer, backends)
    try:
        mine = local_ports(worker.pid, observer)
    except psutil.NoSuchProcess:
        return False
    if not all(ports.get(backend) in mine for backend in backends):
        return False
    return set(owners(observer).values()) == {owner_of(worker)}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def read_back(service: CQRSService, created: CommandResult) -> Any:
    """The workflow `created` made, read from the standby with read-your-writes; None while the
    standby has not replayed it within the query timeout or measures too far behind."""
    try:
        return service.execute_query(
            QueryFactory().get_workflow(created.aggregate_id), min_position=created.position, cache=False
        )
    except (StaleReadError, ReplicaUnavailableError):
        return None


# ---------------------------------------------------------------- browser sessions


@dataclass
class Sessions:
    pages: list[Any]  # signed in through the proxy, one on each app process
    landed: list[int]  # the pid of the app process each one landed on


@pytest.fixture(scope="module")
def sessions(topology, in_browser, tmp_path_factory) -> Iterator[Sessions]:
    """Fresh browser contexts signed in through the proxy until one has landed on each app
    process (HAProxy sends new sessions to the process with the fewest connections); kept open."""
    evidence = tmp_path_factory.mktemp("topology-sessions")
    contexts: list[Any] = []
    pids = {app.pid for app in topology.apps}

    def open_sessions(browser: Any) -> Sessions:
        pages: list[Any] = []
        landed: list[int] = []
        with evidence_on_failure(pages, evidence):
            while set(landed) != pids:
                assert len(contexts) < 6, f"six sessions landed only on {landed}"
                contexts.append(new_context(browser))
                pages.append(open_and_sign_in(contexts[-1], topology.proxy.url, "workflows"))
                landed.append(served_by(pages[-1]))
        first = {pid: landed.index(pid) for pid in pids}
        order = sorted(first.values())
        return Sessions([pages[i] for i in order], [landed[i] for i in order])

    def close(browser: Any) -> None:
        for context in contexts:
            context.close()

    try:
        yield in_browser(open_sessions)
    finally:
        in_browser(close)


def metric_value(page: Any, label: str) -> Any:
    """The value of the st.metric labelled `label`."""
    metric = page.get_by_test_id("stMetric").filter(
        has=page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    )
    return metric.get_by_test_id("stMetricValue")


# ---------------------------------------------------------------- the tests


def test_each_process_reaches_only_the_servers_its_settings_name(topology, sessions):
    """Apps: pgbouncer (commands, queries) and the standby (queries), the primary itself only
    for the projections' status; no runner lock, no LISTEN. Workers: the primary only. pgbouncer:
    the primary, with no more server connections than its pool."""
    first, second = topology.workers
    for app in topology.apps:
        reached = topology.servers_reached(app.pid)
        assert {"pgbouncer", "standby"} <= reached <= {"pgbouncer", "standby", "primary"}, (app.pid, reached)
    for worker in topology.workers:
        assert topology.servers_reached(worker.pid) == {"primary"}, worker.pid
    assert topology.servers_reached(topology.bouncer.process.pid) == {"primary"}

    # The runner locks: polled by the two workers' sessions, held by the first one's; none of an app.
    sessions_now = lock_sessions(topology.observer)
    ports = client_ports(topology.observer, sessions_now)
    by_worker = {w.pid: local_ports(w.pid, topology.observer) for w in topology.workers}
    assert sorted(
        next(pid for pid, mine in by_worker.items() if ports[s] in mine) for s in sessions_now
    ) == sorted([first.pid, second.pid])
    assert holds_every_projection(topology.observer, first)
    with topology.observer.connect() as conn:
        listening = conn.execute(
            text(
                "SELECT client_port FROM pg_stat_activity WHERE datname = current_database()"
                " AND query = 'LISTEN cqrs_events'"
            )
        ).scalars()
        assert all(any(port in mine for mine in by_worker.values()) for port in listening)
        pooled = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = :login AND datname = current_database()"
            ),
            {"login": RUNTIME_LOGIN},
        ).scalar_one()
        streaming = conn.execute(
            text("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        ).scalar_one()
    assert 0 < pooled <= 20  # deploy/pgbouncer.ini's default_pool_size
    assert streaming == 1

    # Each process serves its own metrics on its own port.
    for pid, port in topology.metrics_ports.items():
        assert "cqrs_projection_position{" in scrape(port), pid
    parts = {
        **{f"app {n}": app.pid for n, app in enumerate(topology.apps, 1)},
        **{f"worker {n}": w.pid for n, w in enumerate(topology.workers, 1)},
        "pgbouncer": topology.bouncer.process.pid,
    }
    counts = {name: dict(sorted(topology.connections(pid).items())) for name, pid in parts.items()}
    print(f"\nscale-out topology: open connections after the first pages, by process and server: {counts}")


def test_a_workflow_created_in_the_browser_is_applied_by_one_worker_and_read_from_the_standby(
    topology, sessions, in_browser, tmp_path
):
    title = f"Scale-out study {uuid.uuid4().hex[:8]}"

    def scenario(browser: Any) -> list[str]:
        from playwright.sync_api import expect

        reading = []
        with evidence_on_failure(sessions.pages, tmp_path):
            for page in sessions.pages:  # both app processes read from the standby
                page.goto(f"{topology.proxy.url}/system")
                expect(page.get_by_role("heading", name="System", exact=True)).to_be_visible(timeout=60_000)
                # The card is a fragment redrawn every few seconds: the first of its values, once drawn.
                shown = metric_value(page, "Queries read from").first
                expect(shown).to_have_text("the replica", timeout=60_000)
                reading.append(shown.inner_text())
            writer, reader = sessions.pages
            writer.goto(f"{topology.proxy.url}/new_workflow")
            expect(writer.get_by_role("heading", name="New workflow", exact=True)).to_be_visible(
                timeout=60_000
            )
            wait_until_idle(writer)
            writer.get_by_label("Title").fill(title)
            writer.get_by_label("Research question").fill("Does the work spread over the machines?")
            writer.get_by_role("button", name="Create workflow", exact=True).click()
            # The detail opens once the standby has replayed the projected rows (read-your-writes).
            expect(writer.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=60_000)
            assert served_by(writer) == sessions.landed[0]

            reader.goto(f"{topology.proxy.url}/workflows")
            search = reader.get_by_role("textbox", name="Search", exact=True)
            search.fill(title)
            search.press("Enter")
            cell = reader.get_by_role("gridcell", name=title, exact=True, include_hidden=True)
            expect(cell).to_have_count(1, timeout=30_000)
            assert served_by(reader) == sessions.landed[1]
        return reading

    assert in_browser(scenario) == ["the replica", "the replica"]
    standby = create_engine(topology.database.standby_url, poolclass=NullPool)
    try:
        with standby.connect() as conn:
            stored = conn.execute(
                text("SELECT status FROM workflow_summary WHERE title = :title"), {"title": title}
            ).scalars()
            assert list(stored) == ["draft"]
    finally:
        standby.dispose()
    # Applied by the first worker alone; the second still only stands by; nothing applied twice.
    assert holds_every_projection(topology.observer, topology.workers[0])
    assert_exactly_once(topology.observer)


def test_the_standby_worker_takes_over_after_kill_9_and_applies_the_next_command(topology):
    """Two rounds. Idle: nothing is sent after the kill, so the standby finds the locks free at
    its next poll (CQRS_PROJECTION_POLL_SECONDS). Then a third worker stands by, the new holder is
    killed and a command is sent through pgbouncer at once: its NOTIFY wakes the standby, which
    takes over and applies it, and the command is read back from the streaming standby."""
    holder, standby_worker = topology.workers[:2]
    assert holds_every_projection(topology.observer, holder)

    killed_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    wait_until(
        lambda: holds_every_projection(topology.observer, standby_worker),
        TAKEOVER_BOUND + 20,
        "the standby worker to hold every projection",
    )
    idle_takeover = time.monotonic() - killed_at

    holder, standby_worker = standby_worker, topology.start_worker()
    assert holds_every_projection(topology.observer, holder)
    service = topology.service()
    try:
        killed_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        created = service.execute_command(
            CommandFactory("rita").create_research_workflow(
                title="Sent right after the kill",
                research_question="Which worker applies me?",
                methodology="exploratory",
            )
        )
        wait_until(
            lambda: holds_every_projection(topology.observer, standby_worker),
            TAKEOVER_BOUND + 20,
            "the standby worker to hold every projection",
        )
        takeover = time.monotonic() - killed_at
        detail = wait_until(
            lambda: read_back(service, created),
            APPLIED_BOUND + 20,
            "the new command to be read back from the standby",
        )
        applied = time.monotonic() - killed_at
    finally:
        service.close()

    assert detail.workflow["title"] == "Sent right after the kill"
    assert_exactly_once(topology.observer)
    print(
        f"\nscale-out topology: kill -9 of the worker holding the {len(PROJECTION_NAMES)} projections; "
        f"idle, the standby worker held them all after {idle_takeover:.2f} s; with a command sent through "
        f"pgbouncer right after the kill, after {takeover:.2f} s, and the command was read back from the "
        f"standby {applied:.2f} s after the kill"
    )
    assert idle_takeover <= TAKEOVER_BOUND, f"take-over took {idle_takeover:.1f} s"
    assert takeover <= TAKEOVER_BOUND, f"take-over took {takeover:.1f} s"
    assert applied <= APPLIED_BOUND, f"the command was read back {applied:.1f} s after the kill"


def test_haproxy_keeps_serving_when_an_app_process_is_killed(topology, sessions, in_browser, tmp_path):
    """kill -9 of the app process holding the first session: the proxy's health endpoint keeps
    answering (a request for the dead process is sent to the other), and the person on it who
    reloads lands on the other process, still signed in (the shared cookie secret), and reads
    what was written meanwhile."""
    victim = next(app for app in topology.apps if app.pid == sessions.landed[0])
    survivor = next(app for app in topology.apps if app is not victim)
    title = f"Written while an app process was down {uuid.uuid4().hex[:8]}"
    service = topology.service()
    try:
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait(10)
        answers = []
        while time.monotonic() - killed_at < PROXY_OUTAGE_BOUND:
            answers.append(topology.proxy.healthy())
        created = service.execute_command(
            CommandFactory("rita").create_research_workflow(
                title=title, research_question="Is anyone still serving?", methodology="exploratory"
            )
        )
        wait_until(lambda: read_back(service, created), 60, "the workflow to be read back from the standby")
    finally:
        service.close()
    assert all(answers), f"{answers.count(False)} of {len(answers)} health requests failed after the kill"

    def scenario(browser: Any) -> int:
        from playwright.sync_api import expect

        page = sessions.pages[0]
        with evidence_on_failure([page], tmp_path):
            page.goto(f"{topology.proxy.url}/workflows")
            expect(page.get_by_role("button", name="Sign out")).to_be_visible(timeout=60_000)
            search = page.get_by_role("textbox", name="Search", exact=True)
            search.fill(title)
            search.press("Enter")
            cell = page.get_by_role("gridcell", name=title, exact=True, include_hidden=True)
            expect(cell).to_have_count(1, timeout=30_000)
            return served_by(page)

    assert in_browser(scenario) == survivor.pid
    print(
        f"\nscale-out topology: after kill -9 of an app process, {len(answers)} health requests through "
        f"HAProxy in {PROXY_OUTAGE_BOUND:.0f} s all answered; its signed-in person, reloading, was "
        "served by the other process"
    )
