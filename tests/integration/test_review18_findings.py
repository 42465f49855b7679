"""review18: attempts to break the command path's raw-connection / one-append / id changes.

Each test states what it tries; the ones that hold are kept as regression tests."""

from __future__ import annotations

import threading
import uuid

import pytest
from services import build_service
from sqlalchemy import text

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import DriverConnection, _driver_rows
from cqrs_core.infra.errors import CQRSError, InfrastructureError, ValidationError


def _factory() -> CommandFactory:
    return CommandFactory(actor="alice", role="researcher")


def _create(svc, f=None, **kw):
    f = f or _factory()
    return svc.execute_command(
        f.create_research_workflow(title="T", research_question="Q?", methodology="systematic_review", **kw)
    )


@pytest.fixture
def svc(db_url):
    s = build_service(db_url)
    yield s
    s.close()


def test_refused_commands_return_the_raw_connection(svc):
    """A ValidationError / NotFound raised inside work() leaves no connection checked out."""
    pool = svc.command_engine.pool
    wf = _create(svc).aggregate_id
    f = _factory()
    for _ in range(30):
        with pytest.raises(CQRSError):
            svc.execute_command(f.resume_workflow(workflow_id=uuid.UUID(wf)))  # refused in decide
        with pytest.raises(CQRSError):
            svc.execute_command(f.start_workflow(workflow_id=uuid.uuid4()))  # no such workflow
    assert pool.checkedout() == 0


def test_a_base_exception_inside_work_returns_the_connection(svc, monkeypatch):
    bus = svc.command_bus
    pool = svc.command_engine.pool

    class Boom(BaseException):
        pass

    def work(conn):
        assert isinstance(conn, DriverConnection)
        raise Boom

    for _ in range(25):
        with pytest.raises(Boom):
            bus._run(work, atomic=False, driver=True)
    assert pool.checkedout() == 0


def test_terminated_pool_connections_reconnect_once_and_apply_once(svc, db_url):
    f = _factory()
    wfs = [_create(svc, f).aggregate_id for _ in range(3)]
    admin = svc.engine
    with admin.connect() as c:
        c.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'cqrs-commands' AND datname = current_database()"
            )
        )
    for wf in wfs:
        r = svc.execute_command(f.update_workflow_details(workflow_id=uuid.UUID(wf), title="renamed"))
        assert not r.duplicate
    assert svc.command_engine.pool.checkedout() == 0
    with admin.connect() as c:
        n = c.execute(text("SELECT count(*) FROM events WHERE version = 2")).scalar()
    assert n == 3


def test_the_raw_path_keeps_the_role(db_url):
    """As cqrs_reader (no INSERT on events), a workflow command must be refused: the raw path
    must run as the role, not as the login (the test server's superuser)."""
    s = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_database_role("cqrs_reader")
        .with_migrations(False)
        .with_rate_limit(1e6, 10**6)
        .build()
    )
    try:
        eng = s.command_engine
        proxied = eng.raw_connection()
        try:
            d = DriverConnection(eng, proxied)
            assert _driver_rows(d, "SELECT current_user AS u", ())[0].u == "cqrs_reader"
        finally:
            DriverConnection(eng, proxied).release()
        with pytest.raises(CQRSError):
            _create(s)
    finally:
        s.close()


def test_the_same_create_sent_twice_concurrently_applies_once(svc):
    f = _factory()
    errors: list[BaseException] = []
    for _ in range(15):
        cmd = f.create_research_workflow(title="T", research_question="Q?", methodology="systematic_review")
        results = []
        barrier = threading.Barrier(2)

        def send(cmd=cmd, results=results, barrier=barrier):
            barrier.wait()
            try:
                results.append(svc.execute_command(cmd))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        ts = [threading.Thread(target=send) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        assert sorted(r.duplicate for r in results) == [False, True]
        assert len({r.position for r in results}) == 1
        with svc.engine.connect() as c:
            n = c.execute(
                text("SELECT count(*) FROM events WHERE command_id = :c"), {"c": cmd.command_id}
            ).scalar()
        assert n == 1


def test_statement_timeout_returns_a_clean_connection(svc):
    bus = svc.command_bus
    eng = svc.command_engine
    eng.dispose()

    def work(conn):
        _driver_rows(conn, "SET LOCAL statement_timeout = 50; SELECT pg_sleep(1)", ())

    with pytest.raises(CQRSError):
        from cqrs_core.infra.db import translate_db_errors

        with translate_db_errors():
            bus._run(work, atomic=False, driver=True)
    assert eng.pool.checkedout() == 0
    wf = _create(svc)
    assert wf.position > 0
    with eng.connect() as c:
        assert c.exec_driver_sql("SHOW statement_timeout").scalar() == "0"


def test_validation_error_on_payload_does_not_leak(svc):
    store = svc.event_store
    from cqrs_core.eventlog.store import EventMetadata, NewEvent

    with pytest.raises(ValidationError):
        store.append("s-x", 0, [NewEvent("WorkflowCreated", {"a": float("nan")})], EventMetadata(actor="a"))
    with pytest.raises(InfrastructureError):
        store.append("s-x", 2**31, [NewEvent("WorkflowCreated", {"a": 1})], EventMetadata(actor="a"))


_VARIANTS = {
    "emoji": ("alice", {"t": "héllo 🎉 \u2028 日本"}),
    "literal_backslash_u0000": ("alice", {"t": "a\\u0000b", "k\\u0000": 1}),
    "megabyte": ("alice", {"t": "x" * 1_000_000}),
    "nested": ("alice", {"l": [1, 2.5, None, True, {"d": []}], "f": -0.0}),
    "surrogate_in_payload": ("alice", {"t": "a\ud800b"}),
    "surrogate_in_actor": ("al\ud800ice", {"t": "x"}),
    "nul_in_actor": ("al\x00ice", {"t": "x"}),
}


@pytest.mark.parametrize("variant", list(_VARIANTS))
def test_one_append_and_general_statement_store_and_refuse_alike(db_url, variant):
    """The same single append through `_append_one` and through `_append_general` (forced by
    monkeypatching the dispatcher) either stores the same rows or raises the same error class."""
    import datetime as dt

    from cqrs_core.eventlog.store import CommandRecord, EventMetadata, EventStore, NewEvent, StreamAppend
    from cqrs_core.infra.db import make_engine, translate_db_errors

    actor, payload = _VARIANTS[variant]
    engine = make_engine(db_url, autocommit=True)
    store = EventStore(engine)
    outcomes = []
    try:
        for how in ("one", "general"):
            stream = f"wf-{uuid.uuid4()}"
            cmd, corr = uuid.uuid4(), uuid.uuid4()
            when = dt.datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=dt.UTC)
            meta = EventMetadata(
                actor=actor, command_id=cmd, correlation_id=corr, causation_id=cmd, occurred_at=when
            )
            rec = CommandRecord(cmd, "CompleteTask", stream, {"command_id": str(cmd), "events": [], "d": 0.5})
            a = StreamAppend(stream, 0, [NewEvent("NotAKnownType", payload, 3)], meta)
            try:
                with translate_db_errors(), engine.connect() as conn:
                    if how == "one":
                        store._append_batch(conn, [a], [rec], 5000)  # the dispatcher: one append, one event
                    else:
                        store._append_general(conn, [a], [rec], 5000)
                    conn.commit()
            except Exception as exc:  # noqa: BLE001
                outcomes.append(("error", type(exc).__name__))
                continue
            with engine.connect() as c:
                ev = c.execute(
                    text(
                        "SELECT version, event_type, schema_version, payload, command_id, correlation_id, "
                        "causation_id, actor, occurred_at FROM events WHERE stream_id = :s"
                    ),
                    {"s": stream},
                ).one()
                log = c.execute(
                    text(
                        "SELECT command_type, actor, aggregate_id, correlation_id, result FROM command_log WHERE command_id = :c"
                    ),
                    {"c": cmd},
                ).one()
            res = dict(log.result)
            res.pop("events"), res.pop("position")
            assert res.pop("command_id") == str(cmd)
            outcomes.append(
                (
                    "ok",
                    tuple(ev)[:3],
                    ev.payload == payload,
                    ev.causation_id == ev.command_id,
                    ev.occurred_at == when,
                    ev.actor == actor,
                    log.command_type,
                    log.actor == actor,
                    res,
                )
            )
    finally:
        engine.dispose()
    assert outcomes[0] == outcomes[1], outcomes


def test_every_stale_pooled_connection_is_replaced_after_a_mass_termination(svc):
    """Several pooled command connections (made by concurrent commands), all terminated: each
    later command reconnects (the first failure invalidates the pool's generation), none fails."""
    f = _factory()
    wfs = [_create(svc, f).aggregate_id for _ in range(6)]
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def touch(wf):
        barrier.wait()
        try:
            svc.execute_command(f.start_workflow(workflow_id=uuid.UUID(wf)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=touch, args=(wf,)) for wf in wfs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    pooled = svc.command_engine.pool.checkedin()
    assert pooled >= 2
    with svc.engine.connect() as c:
        killed = c.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'cqrs-commands' AND datname = current_database()"
            )
        ).scalar()
    assert killed >= 2
    for wf in wfs:  # sequential: each checks out whichever pooled connection is next
        svc.execute_command(f.pause_workflow(workflow_id=uuid.UUID(wf), reason="r"))
    assert svc.command_engine.pool.checkedout() == 0


def test_a_lock_wait_timeout_in_the_append_returns_a_clean_connection(db_url):
    from cqrs_core.infra.errors import TimeoutError_

    s = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_rate_limit(1e6, 10**6)
        .with_command_timeout(0.3)
        .build()
    )
    try:
        _create(s)  # the statements are prepared
        with s.engine.connect() as locker:
            locker.exec_driver_sql("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            for _ in range(3):
                with pytest.raises(TimeoutError_):
                    _create(s)
            locker.rollback()
        assert s.command_engine.pool.checkedout() == 0
        for _ in range(5):
            assert not _create(s).duplicate
        with s.command_engine.connect() as c:
            assert c.connection.dbapi_connection.info.transaction_status == 0
    finally:
        s.close()


def test_contended_commands_leave_no_connection_out_and_apply_exactly_once(svc):
    """8 threads hammer 2 workflows (version conflicts, retries, refusals, repeats of the same
    command id): afterwards no connection is checked out, and each command id has at most one event."""
    f = _factory()
    wfs = [uuid.UUID(_create(svc, f).aggregate_id) for _ in range(2)]
    sent: list[uuid.UUID] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def run(i):
        for k in range(40):
            wf = wfs[(i + k) % 2]
            cmd = f.update_workflow_details(workflow_id=wf, title=f"t{i}-{k}")
            with lock:
                sent.append(cmd.command_id)
            for _ in range(2):  # the same command twice
                try:
                    svc.execute_command(cmd)
                except CQRSError as exc:
                    if exc.category not in ("conflict", "concurrency", "validation"):
                        unexpected.append(exc)
                except BaseException as exc:  # noqa: BLE001
                    unexpected.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not unexpected, [(type(e).__name__, getattr(e, "category", None), str(e)) for e in unexpected[:5]]
    assert svc.command_engine.pool.checkedout() == 0
    with svc.engine.connect() as c:
        worst = c.execute(
            text("SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM events GROUP BY command_id) x")
        ).scalar()
    assert worst == 1
