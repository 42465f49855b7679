"""The console behind pgbouncer in transaction-pooling mode (issue 19, part 2).

The fixture builds its own embedded primary, migrates it, and runs Debian's pgbouncer with the
settings of deploy/pgbouncer.ini (pooling.py renders the shipped file: its address, port, auth
file and server become this test's; its pool is made smaller than the clients here, so that
server connections really are shared between transactions). The console then runs as
the README says: CQRS_DATABASE_URL through pgbouncer, CQRS_DIRECT_DATABASE_URL to the server for
migrations and the projections side (a real `cqrs-console worker`).

On the PostgreSQL 15 pass of .ci/run (CQRS_TEST_DATABASE_URL set) the fixture skips: it needs an
embedded server of its own. Without pgbouncer it skips, or fails under CQRS_REQUIRE_INFRA=1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import streamlit as st
from pooling import libpq, shipped_database, start_pgbouncer
from server_processes import stop_process_group
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from streamlit.testing.v1 import AppTest
from waiting import wait_until

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.infra import db
from cqrs_core.infra.config import get_settings, load_settings
from cqrs_core.infra.db import (
    ensure_login_role,
    make_engine,
    migrate,
    start_embedded_server,
    stop_embedded_server,
)
from cqrs_core.infra.errors import CQRSError
from cqrs_core.projections.engine.locks import RUNNER_NAMESPACE
from cqrs_core.service import CQRSService

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"
POOL_SIZE = 4  # pgbouncer's server connections per (user, database) here ...
CLIENTS = 12  # ... and the client threads that share them
RUNTIME_LOGIN = db.EMBEDDED_RUNTIME_LOGIN  # a member of cqrs_app with no rights of its own
# The server's own zone, not UTC: pooled connections must still read timestamps in UTC.
SERVER_TIME_ZONE = "Pacific/Auckland"
START_TIMEOUT = 60.0
# What PREPARE and EXECUTE meet when one connection's transactions land on different servers.
PREPARED_STATEMENT_ERRORS = {"DuplicatePreparedStatement", "InvalidSqlStatementName"}
Q = QueryFactory()


# ---------------------------------------------------------------- pgbouncer and its primary


@dataclass(frozen=True)
class Pooler:
    direct_url: str  # the server itself, as its owner (migrations, the projections side)
    pooled_url: str  # through pgbouncer, as the runtime login
    pooled_owner_url: str  # through pgbouncer, as the owner (a superuser)
    port: int
    log: Path

    def pooled_settings(self, **settings: Any):
        return load_settings(database_url=self.pooled_url, direct_database_url=self.direct_url, **settings)


@pytest.fixture(scope="module")
def pooler(pgbouncer, tmp_path_factory) -> Iterator[Pooler]:
    """An embedded primary of its own (migrated, its runtime login made, its zone not UTC) and
    pgbouncer in front of it; both stopped afterwards, whatever happened."""
    root = tmp_path_factory.mktemp("pooler")
    data_dir = root / "primary"
    with contextlib.ExitStack() as stack:
        stack.callback(stop_embedded_server, data_dir)
        database = shipped_database()  # the primary's database has the shipped name
        owner_url = start_embedded_server(data_dir, database)
        migrate(owner_url)
        ensure_login_role(owner_url, RUNTIME_LOGIN, db.RUNTIME_ROLE)
        admin = create_engine(owner_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {database} SET timezone = '{SERVER_TIME_ZONE}'")
        admin.dispose()

        query = make_url(owner_url).query
        bouncer = start_pgbouncer(
            pgbouncer,
            root / "pgbouncer",
            stack,
            server=(str(query["host"]), str(query["port"])),
            users=[RUNTIME_LOGIN, "postgres"],
            pgdata=data_dir / "pg",
            pool_size=POOL_SIZE,
        )
        assert bouncer.database == database
        yield Pooler(
            direct_url=owner_url,
            pooled_url=bouncer.url(RUNTIME_LOGIN),
            pooled_owner_url=bouncer.url("postgres"),
            port=bouncer.port,
            log=bouncer.log,
        )


def pooled_service(pooler: Pooler, **settings: Any) -> CQRSService:
    """A service as an app process behind the pooler builds it from its settings alone."""
    return (
        CQRSServiceBuilder(pooler.pooled_settings(**settings))
        .with_rate_limit(1e6, 10**6)
        .with_pool_size(CLIENTS)
        .build()
    )


def fill_pool(engine: Engine, connections: int) -> None:
    """Open `connections` client connections at once and hand them back: a busy process's pool.
    The pool hands them out in turn afterwards, so consecutive requests use different ones."""
    with contextlib.ExitStack() as stack:
        for _ in range(connections):
            stack.enter_context(engine.connect())


def server_backends(pooler: Pooler, user: str) -> int:
    """The server's backends of `user` in the fixture's database, counted on a direct connection."""
    with psycopg2.connect(libpq(pooler.direct_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = current_database()",
            (user,),
        )
        return cur.fetchone()[0]


def on_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """`work(i)` on `count` threads started together; the results (or raised errors) in order."""
    start = threading.Barrier(count)

    def run(i: int) -> Any:
        start.wait()
        try:
            return work(i)
        except Exception as exc:  # noqa: BLE001 - the test looks at each one
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def lifecycle(service: CQRSService, n: int):
    """Create a workflow with two tasks, start it, run its first task to completion, then read its
    detail with read-your-writes: the answer includes the last command's events."""
    f = CommandFactory("alice")
    search, analyse = str(uuid.uuid4()), str(uuid.uuid4())
    created = service.execute_command(
        f.create_research_workflow(
            title=f"Pooled study {n}",
            research_question="Does a shared server connection change the answer?",
            methodology="exploratory",
            tasks=[
                {"task_id": search, "name": "Search", "assignee": "bob", "kind": "literature_search"},
                {"task_id": analyse, "name": "Analyse", "assignee": "carol", "kind": "analysis"},
            ],
        )
    )
    wid = created.aggregate_id
    service.execute_command(f.start_workflow(workflow_id=wid))
    service.execute_command(f.start_task(workflow_id=wid, task_id=search))
    done = service.execute_command(
        f.complete_task(workflow_id=wid, task_id=search, result_summary="12 papers")
    )
    return service.execute_query(Q.get_workflow(wid), min_position=done.position, cache=False), done.position


# ---------------------------------------------------------------- the projection worker


@dataclass(frozen=True)
class Worker:
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def worker(pooler, tmp_path_factory) -> Iterator[Worker]:
    """`cqrs-console worker` configured as the README says: the pooled URL and the direct one."""
    home = tmp_path_factory.mktemp("worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env.update(
        CQRS_DATABASE_URL=pooler.pooled_url,
        CQRS_DIRECT_DATABASE_URL=pooler.direct_url,
        CQRS_DATA_DIR=str(home / "data"),
        CQRS_LOG_LEVEL="INFO",
    )
    log = home / "worker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cqrs_core", "worker"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                pytest.fail(
                    f"the worker exited with {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False
                )
            return bool(listeners(pooler))

        wait_until(listening, START_TIMEOUT, "the worker to LISTEN for appends", interval=0.2)
        yield Worker(process, log)
    finally:
        stop_process_group(process)


def listeners(pooler: Pooler) -> list[tuple[str, str]]:
    """(user, application name) of every session LISTENing on the appends' channel."""
    with psycopg2.connect(libpq(pooler.direct_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT usename, application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN cqrs_events'"
        )
        return [tuple(row) for row in cur.fetchall()]


def runner_lock_holders(pooler: Pooler) -> set[str]:
    """The users of the sessions holding projection runner locks."""
    with psycopg2.connect(libpq(pooler.direct_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT a.usename FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s",
            (RUNNER_NAMESPACE,),
        )
        return {row[0] for row in cur.fetchall()}


# ---------------------------------------------------------------- the pooler itself


def test_pgbouncer_runs_one_clients_transactions_on_whichever_server_connection_is_free(pooler):
    """The fixture really pools by transaction: with every server connection of the pool held by
    an open transaction but one, a client's transaction runs on that one, and the next on another."""
    holders = [psycopg2.connect(libpq(pooler.pooled_url)) for _ in range(POOL_SIZE)]
    client = psycopg2.connect(libpq(pooler.pooled_url))
    client.autocommit = True

    def backend(conn) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

    try:
        held = [backend(h) for h in holders]  # each holds a transaction open: the whole pool
        assert len(set(held)) == POOL_SIZE
        ran_on = []
        for i in range(2):
            holders[i].commit()  # frees exactly one server connection
            ran_on.append(backend(client))
            assert backend(holders[i]) == held[i]  # a new transaction of the holder: the one left
    finally:
        for conn in (*holders, client):
            conn.close()

    assert ran_on == held[:2]  # one client, two transactions, two server connections


def test_many_clients_share_at_most_the_pool_size_of_server_connections(pooler):
    clients = [psycopg2.connect(libpq(pooler.pooled_url)) for _ in range(CLIENTS)]
    try:
        for conn in clients:
            conn.autocommit = True

        def ask(i: int) -> int:
            with clients[i].cursor() as cur:
                for _ in range(20):
                    cur.execute("SELECT pg_backend_pid() FROM pg_sleep(0.001)")
                return cur.fetchone()[0]

        pids = on_threads(CLIENTS, ask)
        assert all(isinstance(pid, int) for pid in pids), pids
        assert len(set(pids)) <= POOL_SIZE
        assert server_backends(pooler, RUNTIME_LOGIN) <= POOL_SIZE
    finally:
        for conn in clients:
            conn.close()


def test_pooled_connections_read_time_in_utc_whatever_server_connection_they_land_on(pooler):
    engine = make_engine(pooler.pooled_url, pool_size=CLIENTS, role=db.RUNTIME_ROLE, pooled=True)
    try:
        fill_pool(engine, CLIENTS)

        def zones(_i: int) -> set[str]:
            seen = set()
            for _ in range(10):
                with engine.connect() as conn:
                    seen.add(conn.execute(text("SHOW TimeZone")).scalar_one())
            return seen

        seen = set().union(*on_threads(CLIENTS, zones))
    finally:
        engine.dispose()
    with psycopg2.connect(libpq(pooler.direct_url)) as conn, conn.cursor() as cur:
        cur.execute("SHOW TimeZone")
        server_zone = cur.fetchone()[0]

    assert seen == {"UTC"}
    assert server_zone == SERVER_TIME_ZONE  # so the UTC above is the console's doing


def test_a_pooled_login_with_more_rights_than_the_runtime_role_is_logged(pooler, caplog, monkeypatch):
    monkeypatch.setattr(db, "_warned_roles", set())
    caplog.set_level(logging.WARNING, logger=db.__name__)
    for url in (pooler.pooled_url, pooler.pooled_owner_url):
        engine = make_engine(url, pool_size=1, role=db.RUNTIME_ROLE, pooled=True)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("database user postgres does not act as role cqrs_app behind the pooler")
    assert "it is a superuser" in warnings[0]


# ---------------------------------------------------------------- the console through it


def test_commands_queries_and_a_worker_on_the_direct_url_work_through_pgbouncer(pooler, worker):
    """Many client threads run commands and read-your-writes detail queries through the pooler;
    a `cqrs-console worker` on the direct URL applies what they write."""
    service = pooled_service(pooler)
    try:
        assert make_url(service.command_engine.url).port == pooler.port
        assert make_url(service.read_engine.url).port == pooler.port
        assert make_url(service.direct_url or "") == make_url(pooler.direct_url)
        for engine in (service.engine, service.command_engine, service.read_engine):
            fill_pool(engine, CLIENTS)

        results = on_threads(CLIENTS, lambda n: lifecycle(service, n))
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, errors
        for n, (detail, _position) in enumerate(results):
            assert detail.workflow["title"] == f"Pooled study {n}"
            assert detail.workflow["status"] == "running"
            assert {t["name"]: t["status"] for t in detail.tasks} == {
                "Search": "completed",
                "Analyse": "pending",
            }
        last = max(position for _detail, position in results)
        listed = service.execute_query(
            Q.get_workflow_list(status=["running"], page_size=200),
            min_position=last,
            cache=False,
        )
        assert {item["title"] for item in listed.items} >= {f"Pooled study {n}" for n in range(CLIENTS)}

        clients = sum(
            e.pool.checkedin() for e in (service.engine, service.command_engine, service.read_engine)
        )
        assert clients >= 3 * CLIENTS > POOL_SIZE
        assert server_backends(pooler, RUNTIME_LOGIN) <= POOL_SIZE
    finally:
        service.close()
    # The worker's session state is on the server itself: its LISTEN and its runner locks.
    assert [user for user, _app in listeners(pooler)] == ["postgres"]
    assert runner_lock_holders(pooler) == {"postgres"}


def test_no_server_connection_holds_a_prepared_statement_after_traffic_through_the_pooler(pooler, worker):
    service = pooled_service(pooler)
    try:
        results = on_threads(CLIENTS, lambda n: lifecycle(service, 100 + n))
        assert not [r for r in results if isinstance(r, Exception)]
    finally:
        service.close()
    # One transaction held open per server connection of the pool: together they see each one.
    clients = [psycopg2.connect(libpq(pooler.pooled_url)) for _ in range(POOL_SIZE)]
    try:
        seen = {}
        for conn in clients:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements)")
                pid, prepared = cur.fetchone()
                seen[pid] = prepared
    finally:
        for conn in clients:
            conn.close()

    assert len(seen) == POOL_SIZE
    assert set(seen.values()) == {0}


@pytest.mark.parametrize("path", ["commands", "detail query"])
def test_prepared_statements_on_fail_behind_the_pooler(pooler, worker, path):
    """What CQRS_PREPARED_STATEMENTS=auto avoids: a statement prepared on one server connection is
    missing on the next, or already there for another client. More client connections than
    server connections each preparing the same statement cannot all succeed."""
    service = pooled_service(pooler, prepared_statements="on")
    try:
        if path == "commands":
            engine = service.command_engine
            factory = CommandFactory("alice")

            def work(n: int) -> Any:
                return service.execute_command(
                    factory.create_research_workflow(
                        title=f"Prepared through the pooler {n}",
                        research_question="Does it break?",
                        methodology="exploratory",
                    )
                )

        else:
            writer = pooled_service(pooler)  # the workflow to read, written without PREPARE
            try:
                detail, position = lifecycle(writer, 200)
            finally:
                writer.close()
            engine = service.read_engine
            wid = detail.workflow["workflow_id"]

            def work(n: int) -> Any:
                return service.execute_query(Q.get_workflow(wid), min_position=position, cache=False)

        fill_pool(engine, CLIENTS)
        results = on_threads(CLIENTS, work)
    finally:
        service.close()

    errors = [r for r in results if isinstance(r, Exception)]
    assert errors, "every request succeeded with prepared statements behind the pooler"
    assert all(isinstance(e, CQRSError) for e in errors), errors
    causes = {type(getattr(e.__cause__, "orig", e.__cause__)).__name__ for e in errors}
    assert causes <= PREPARED_STATEMENT_ERRORS, causes


# ---------------------------------------------------------------- the app through it


@pytest.fixture
def pooled_app(pooler, worker, monkeypatch):
    """The app's settings as the README gives them behind a pooler; no cached runtime of an
    earlier test. The projections run in the worker."""
    for name in [
        k for k in os.environ if k.startswith("CQRS_") and not k.startswith(("CQRS_TEST_", "CQRS_REQUIRE_"))
    ]:
        if name != "CQRS_DATA_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CQRS_DATABASE_URL", pooler.pooled_url)
    monkeypatch.setenv("CQRS_DIRECT_DATABASE_URL", pooler.direct_url)
    monkeypatch.setenv("CQRS_PROJECTIONS_IN", "none")
    get_settings.cache_clear()
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()  # releases the runtime (disposes its engines)
    get_settings.cache_clear()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_app_lists_shows_and_changes_a_workflow_through_pgbouncer(pooler, pooled_app):
    service = pooled_service(pooler)
    try:
        f = CommandFactory("admin")
        created = service.execute_command(
            f.create_research_workflow(
                title="Served through the pooler",
                research_question="Do the pages work?",
                methodology="exploratory",
            )
        )
        service.execute_query(
            Q.get_workflow(created.aggregate_id), min_position=created.position, cache=False
        )
    finally:
        service.close()
    wid = str(created.aggregate_id)

    at = run(AppTest.from_file(str(APP), default_timeout=60))
    at.switch_page("pages/workflows.py")
    run(at)
    assert "Served through the pooler" in list(at.dataframe(key="wf_table").value["title"])

    at.switch_page("pages/workflow.py")
    at.query_params["workflow"] = wid
    run(at)
    assert [t.value for t in at.title] == ["Served through the pooler"]
    at.button(key="wf_act_start").click()
    run(at)
    assert any("Workflow started." in t.value for t in at.toast)
    assert ":blue-badge[running]" in at.markdown[0].value  # read back after the worker applied it


# ---------------------------------------------------------------- what it costs: bench --through


@pytest.mark.slow
def test_bench_runs_its_commands_and_queries_through_the_pooler(pooler):
    from cqrs_core.cli.bench import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["bench", "--quick", "--json", "--url", pooler.direct_url, "--through", pooler.pooled_owner_url]
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.handler(args) == 0
    report = json.loads(out.getvalue())

    connections = report["machine"]["connections"]
    assert connections.startswith(
        f"through the pooler at postgresql+psycopg2://postgres:***@127.0.0.1:{pooler.port}/"
    )
    assert connections.endswith(", prepared statements off")
    assert all(c["commands"] > 0 and c["errors"] == 0 for c in report["commands"])
    assert report["queries"] and all(q["cold_p50_ms"] > 0 for q in report["queries"])
