"""Faults and concurrency — statement timeouts are enforced by the database (issue 8).

A command or query that runs past its timeout must be cancelled by PostgreSQL itself
(`SET LOCAL statement_timeout`), not abandoned by a client thread while the server keeps working.
Each test looks at the service's own sessions in pg_stat_activity (application_name and database)
right after the error, while whatever made it slow is still in place: a statement left running
would still be there (sleeping, or waiting on the lock).

test_command_bus.py and test_queries.py already show that a timed-out command writes nothing and
that a timed-out query stops waiting on its lock; these add the pg_stat_activity/pg_locks evidence
for commands, many timeouts at once, and that the pool is healthy afterwards.

Reproduce: .venv/bin/pytest -s tests/integration/test_faults_timeouts.py
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from fault_tools import OBSERVER_APP, application_names, backends, checked_out, scalar
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from waiting import wait_until

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import TimeoutError_

pytestmark = pytest.mark.slow

TIMEOUT = 0.3
UNGRANTED = (
    "SELECT count(*) FROM pg_locks WHERE NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@pytest.fixture
def observer(db_url):
    engine = make_engine(db_url, pool_size=2, application_name=OBSERVER_APP)
    yield engine
    engine.dispose()


@pytest.fixture
def service(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_command_timeout(TIMEOUT)
        .with_query_timeout(TIMEOUT)
        .with_rate_limit(1e9, 10**9)
        .with_pool_size(8)
        .build()
    )
    yield svc
    svc.close()


def create(svc, title="Timed", command_id=None):
    kw = {"command_id": command_id} if command_id else {}
    return svc.execute_command(
        CommandFactory(actor="alice").create_research_workflow(
            title=title, research_question="Is it cancelled in the database?", methodology="exploratory", **kw
        )
    )


def still_working(observer, apps) -> list:
    """The service's sessions that are running a statement or holding a transaction open."""
    return [b for b in backends(observer, apps) if b.state != "idle" or b.has_xid]


def waiting_on_locks(observer, apps) -> list:
    return [b for b in backends(observer, apps) if b.wait_event_type == "Lock"]


def locks_held_by(observer, apps, relation: str) -> int:
    return scalar(
        observer,
        """SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                               WHERE a.application_name = ANY(CAST(:apps AS text[])) AND a.datname = current_database()
                                 AND l.relation = CAST(:rel AS regclass)""",
        apps=list(apps),
        rel=relation,
    )


def test_a_command_slower_than_its_timeout_is_cancelled_in_the_database(service, observer):
    apps = application_names(service)
    with observer.begin() as c:
        c.exec_driver_sql(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$;"  # a command far slower than its timeout
            "CREATE TRIGGER slow AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_insert();"
        )
    # Control: the same check does see a slow command while it runs (here under a 30 s timeout).
    patient = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(service.engine.url.render_as_string(False))
        .with_migrations(False)
        .with_command_timeout(30)
        .build()
    )
    control_errors: list[Exception] = []

    def run_patiently():
        try:
            create(patient, title="Patient")
        except Exception as exc:  # checked below
            control_errors.append(exc)

    control = threading.Thread(target=run_patiently)
    try:
        control.start()

        def in_its_trigger():
            seen = still_working(observer, apps)
            return seen if any(b.wait_event == "PgSleep" for b in seen) else None

        seen = wait_until(in_its_trigger, 10, "the control command to reach its trigger", interval=0.02)
        assert seen and locks_held_by(observer, apps, "events") > 0, "the check cannot see a running command"
        scalar(
            observer,
            "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid = ANY(CAST(:pids AS int[]))",
            pids=[b.pid for b in seen],
        )
        control.join(10)
        assert [type(e) for e in control_errors] == [TimeoutError_]
    finally:
        control.join(10)
        patient.close()
    assert still_working(observer, apps) == []

    command_id = uuid.uuid4()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError_):
        create(service, command_id=command_id)
    took = time.monotonic() - t0
    # The 30 s sleep would still be running now if only the client had given up.
    assert still_working(observer, apps) == []
    assert (
        scalar(
            observer,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()",
        )
        == 0
    )
    assert locks_held_by(observer, apps, "events") == 0
    assert checked_out(service) == 0
    assert scalar(observer, "SELECT count(*) FROM events") == 0
    assert scalar(observer, "SELECT count(*) FROM command_log") == 0

    with observer.begin() as c:
        c.exec_driver_sql("DROP TRIGGER slow ON events")
    result = create(service, command_id=command_id)  # the retry is a first execution, not a duplicate
    assert not result.duplicate and scalar(observer, "SELECT count(*) FROM events") == 1
    print(
        f"\ntimeouts: a command sleeping 30 s in a trigger raised {TimeoutError_.__name__} after {took:.2f} s "
        f"(timeout {TIMEOUT} s); service sessions still working: 0; writes: 0"
    )


def test_commands_blocked_on_a_lock_time_out_together_and_leave_nothing_waiting(db_url, service, observer):
    apps = application_names(service)
    locker = create_engine(db_url, poolclass=NullPool)
    threads, errors, n = [], [], 8
    ids = [uuid.uuid4() for _ in range(n)]
    barrier = threading.Barrier(n)

    def attempt(command_id):
        barrier.wait()
        try:
            create(service, title="Blocked", command_id=command_id)
        except Exception as exc:  # collected and checked below
            errors.append(exc)

    try:
        with locker.connect() as conn:
            tx = conn.begin()
            conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))  # every append must wait
            t0 = time.monotonic()
            threads = [threading.Thread(target=attempt, args=(i,)) for i in ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            took = time.monotonic() - t0
            assert len(errors) == n and all(isinstance(e, TimeoutError_) for e in errors), errors
            # The lock is still held: a statement that had not been cancelled would still wait on it.
            assert waiting_on_locks(observer, apps) == [] and still_working(observer, apps) == []
            assert scalar(observer, UNGRANTED) == 0
            tx.rollback()
    finally:
        locker.dispose()
    assert checked_out(service) == 0
    assert scalar(observer, "SELECT count(*) FROM command_log") == 0
    for command_id in ids:  # the same pool serves again, and each retry has one effect
        assert not create(service, command_id=command_id).duplicate
    assert scalar(observer, "SELECT count(*) FROM events") == n
    print(
        f"\ntimeouts: {n} concurrent commands blocked on a table lock all timed out within {took:.2f} s; "
        f"waiting statements left: 0; ungranted locks: 0; all {n} succeeded once retried"
    )


def test_a_query_blocked_by_a_lock_is_cancelled_in_the_database(db_url, service, observer):
    create(service, title="Visible")
    service.projections.catch_up(timeout=30)
    apps = application_names(service)
    locker = create_engine(db_url, poolclass=NullPool)
    queries = [
        QueryFactory().get_workflow_list(),
        QueryFactory().search_workflows("visible"),
        QueryFactory().get_overview(),
    ]
    try:
        with locker.connect() as conn:
            tx = conn.begin()
            conn.execute(text("LOCK TABLE workflow_summary IN ACCESS EXCLUSIVE MODE"))
            for query in queries:
                t0 = time.monotonic()
                with pytest.raises(TimeoutError_):
                    service.execute_query(query, cache=False)
                assert time.monotonic() - t0 < 5
                assert waiting_on_locks(observer, apps) == [] and still_working(observer, apps) == []
            assert scalar(observer, UNGRANTED) == 0
            tx.rollback()
    finally:
        locker.dispose()
    assert checked_out(service) == 0
    page = service.execute_query(QueryFactory().get_workflow_list(), cache=False)
    assert [w["title"] for w in page.items] == ["Visible"]
    print(
        f"\ntimeouts: {len(queries)} queries blocked by an ACCESS EXCLUSIVE lock timed out; "
        "service statements left waiting: 0; the pool served the next query"
    )
