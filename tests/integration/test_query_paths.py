"""The query bus's fast paths: one statement per list/search/detail query on the raw driver
connection, prepared detail statements, the indexes of migration 0004, and connections handed
back to the shared pool exactly as they were taken."""

from __future__ import annotations

import json
import uuid

import psycopg2.extensions
import pytest
from services import build_service
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from test_queries import SEED_SQL
from waiting import wait_until

from cqrs_core import CommandFactory, QueryFactory
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import NotFoundError, TimeoutError_
from cqrs_core.infra.metrics import MetricsRecorder
from cqrs_core.read.handlers.workflows import workflow_list
from cqrs_core.read.query_bus import QueryBus
from cqrs_core.read.sql import SqlReader

Q = QueryFactory()


def checkpoints(engine) -> dict[str, tuple[int, int]]:
    with engine.connect() as conn:
        return {
            r.name: (int(r.txid), int(r.last_position))
            for r in conn.execute(
                text("SELECT name, last_txid::text AS txid, last_position FROM projection_checkpoints")
            )
        }


def create_with_tasks(service, title="Study"):
    f = CommandFactory("alice")
    result = service.execute_command(
        f.create_research_workflow(
            title=title,
            research_question="Does it work?",
            methodology="exploratory",
            tasks=[
                {"name": "Search", "assignee": "bob", "kind": "literature_search"},
                {"name": "Analyse", "assignee": "carol", "kind": "analysis"},
            ],
        )
    )
    service.execute_command(f.start_workflow(workflow_id=result.aggregate_id))
    return result


def test_detail_equals_the_tables_read_directly_with_the_same_types(service):
    result = create_with_tasks(service)
    service.projections.catch_up()
    wid = result.aggregate_id
    for _ in range(3):  # the first run prepares the statement on its connection, the next ones reuse it
        detail = service.execute_query(Q.get_workflow(wid), cache=False)
        with service.engine.connect() as conn:
            workflow = dict(
                conn.execute(text("SELECT * FROM workflow_summary WHERE workflow_id = :w"), {"w": str(wid)})
                .one()
                ._mapping
            )
            tasks = [
                dict(r._mapping)
                for r in conn.execute(
                    text("SELECT * FROM task_summary WHERE workflow_id = :w ORDER BY created_at, name"),
                    {"w": str(wid)},
                )
            ]
            activity = [
                dict(r._mapping)
                for r in conn.execute(
                    text(
                        "SELECT position, event_type, actor, occurred_at, task_id, correlation_id, summary "
                        "FROM workflow_activity WHERE workflow_id = :w ORDER BY position"
                    ),
                    {"w": str(wid)},
                )
            ]
        workflow.pop("search_vector")
        assert detail.workflow == workflow
        assert detail.tasks == tasks and len(tasks) == 2
        assert detail.activity == activity and len(activity) >= 4
        for got, want in zip(detail.tasks + detail.activity, tasks + activity, strict=True):
            assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
    with pytest.raises(NotFoundError):
        service.execute_query(Q.get_workflow(uuid.uuid4()), cache=False)


def test_cached_answers_carry_the_cursors_of_their_own_snapshot(service):
    wid = create_with_tasks(service).aggregate_id
    service.projections.catch_up()
    create_with_tasks(service, "Second")
    service.projections.run_once("workflow_summary")  # the projections may now stand at different cursors
    expected = checkpoints(service.engine)
    queries = [
        Q.get_workflow_list(),
        Q.search_workflows("study"),
        Q.get_workflow(wid),
        Q.get_overview(),
        Q.get_statistics(),
    ]
    for query in queries:
        service.execute_query(query)
        entry = service.query_bus.cache.get(query.cache_key())
        assert entry is not None
        assert entry.cursors == {p: expected[p] for p in query.projections}, query.query_type


def test_every_path_hands_the_connection_back_clean(db_url, service):
    """The read engine is shared with the writers: after answers, errors and timeouts its
    connections must be out of autocommit with no transaction open."""
    create_with_tasks(service)
    service.projections.catch_up()
    ok = [
        Q.get_workflow_list(),
        Q.search_workflows("study"),
        Q.get_statistics(),
        Q.get_overview(),
        Q.get_event_log(),
    ]
    for query in ok:
        service.execute_query(query, cache=False)
    with pytest.raises(NotFoundError):
        service.execute_query(Q.get_workflow(uuid.uuid4()), cache=False)
    with pytest.raises(NotFoundError):  # a multi-statement handler failing inside its transaction
        service.execute_query(Q.get_correlation_trace(uuid.uuid4()), cache=False)
    locker = create_engine(db_url, poolclass=NullPool)
    try:
        with locker.connect() as conn, conn.begin():
            # statistics (several statements in one transaction) begin with view_refreshes
            conn.execute(text("LOCK TABLE workflow_summary, view_refreshes IN ACCESS EXCLUSIVE MODE"))
            svc = build_service(db_url, query_timeout=0.3)
            try:
                for query in (Q.get_workflow_list(), Q.get_workflow(uuid.uuid4()), Q.get_statistics()):
                    with pytest.raises(TimeoutError_):
                        svc.execute_query(query, cache=False)
                assert_pool_clean(svc.engine)
            finally:
                svc.close()
    finally:
        locker.dispose()
    assert_pool_clean(service.engine)
    # and a write through the same pool is still a real transaction
    with pytest.raises(RuntimeError), service.engine.begin() as conn:
        conn.execute(text("INSERT INTO view_refreshes VALUES ('x', now(), 1, 1)"))
        raise RuntimeError("roll back")
    with service.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM view_refreshes WHERE view_name = 'x'")).scalar_one() == 0
        )


def assert_pool_clean(engine) -> None:
    conns = [engine.raw_connection() for _ in range(engine.pool.checkedin())]
    try:
        for c in conns:
            assert c.dbapi_connection.autocommit is False
            assert c.dbapi_connection.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    finally:
        for c in conns:
            c.close()


def test_a_read_on_a_connection_the_server_dropped_is_run_again_once(db_url, service):
    """With pre-ping off (it costs a round trip per query) a pooled connection can be dead; the
    bus runs the read again on a fresh one. A timeout is never run again."""
    create_with_tasks(service)
    service.projections.catch_up()
    engine = make_engine(db_url, pool_size=2, application_name="cqrs-query-nopreping", pre_ping=False)
    bus = QueryBus(engine, MetricsRecorder(), timeout=5, caching=False, cache_size=10, default_ttl=1)
    try:
        assert bus.execute(Q.get_workflow_list()).total == 1
        with service.engine.begin() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'cqrs-query-nopreping'"
                )
            ).scalar_one()
        assert killed == 1

        def backend_gone() -> bool:  # once pg_stat_activity no longer lists it
            with service.engine.connect() as conn:
                return not conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = 'cqrs-query-nopreping'"
                    )
                ).scalar_one()

        wait_until(backend_gone, 10, "the terminated backend to go", interval=0.02)
        assert bus.execute(Q.get_workflow_list()).total == 1
        assert bus.metrics.errors_by_category() == {}
    finally:
        engine.dispose()


# ---------------------------------------------------------------- plans


class ExplainingReader(SqlReader):
    """Runs a handler's statement under EXPLAIN instead of answering it."""

    def __init__(self, cursor):
        super().__init__(cursor, "", ("workflow_summary",))
        self.plan = None

    def execute(self, sql, params=None, *, prepare=False):
        args = dict(params or {}, __projections=list(self.projections))
        self._cursor.execute("EXPLAIN (FORMAT JSON) " + sql, args)
        self.plan = json.dumps(self._cursor.fetchone()[0])
        raise StopIteration


def plan_of(engine, handler, query) -> str:
    raw = engine.raw_connection()
    try:
        with raw.dbapi_connection.cursor() as cur:
            reader = ExplainingReader(cur)
            with pytest.raises(StopIteration):
                handler(reader, query)
            return reader.plan
    finally:
        raw.rollback()
        raw.close()


@pytest.fixture
def seeded(service):
    with service.engine.begin() as c:
        c.execute(text(SEED_SQL), {"n": 20_000})
    with service.engine.connect() as c:
        c.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE workflow_summary")
    return service


def test_list_pages_walk_the_sort_index_and_count_from_the_filter_index(seeded):
    first = plan_of(
        seeded.engine,
        workflow_list,
        Q.get_workflow_list(
            status=["running", "completed"],
            methodology=["meta_analysis", "exploratory"],
            sort="last_activity_at",
        ),
    )
    assert "workflow_summary_last_activity_id" in first  # an ordered walk, no sort of every match
    assert "workflow_summary_filters" in first and "Index Only Scan" in first  # the exact total
    deep = plan_of(seeded.engine, workflow_list, Q.get_workflow_list(page=500, page_size=20))
    assert "workflow_summary_created_id" in deep and "Index Only Scan" in deep
    for descending in (True, False):  # one index serves both directions of a NOT NULL column
        plan = plan_of(seeded.engine, workflow_list, Q.get_workflow_list(sort="title", descending=descending))
        assert "workflow_summary_title_id" in plan


class CountingCursor(psycopg2.extensions.cursor):
    sent: list[str] = []

    def execute(self, query, vars=None):  # noqa: A002 - the driver's signature
        CountingCursor.sent.append(str(query)[:60])
        return super().execute(query, vars)


class CountingConnection(psycopg2.extensions.connection):
    def cursor(self, *args, **kwargs):
        kwargs.setdefault("cursor_factory", CountingCursor)
        return super().cursor(*args, **kwargs)


def test_one_round_trip_per_list_search_detail_and_overview_query(seeded):
    """Each execute() of the driver is one message to the server and one reply."""
    with seeded.engine.connect() as conn:
        wid = conn.execute(text("SELECT workflow_id FROM workflow_summary LIMIT 1")).scalar_one()
    engine = create_engine(
        seeded.engine.url,
        pool_size=1,
        pool_pre_ping=False,
        connect_args={"connection_factory": CountingConnection},
    )
    bus = QueryBus(engine, MetricsRecorder(), timeout=5, caching=False, cache_size=10, default_ttl=1)
    try:
        queries = [
            Q.get_workflow_list(status=["running"], page=3),
            Q.get_workflow_list(page=400),
            Q.search_workflows("sleep"),
            Q.get_workflow(wid),
            Q.get_overview(),
            Q.get_event_log(),
        ]
        for query in queries:
            bus.execute(query)  # the first run prepares what it prepares on this connection
            CountingCursor.sent.clear()
            bus.execute(query)
            assert len(CountingCursor.sent) == 1, (query.query_type, CountingCursor.sent)
        # the statistics: the transaction with the cursors, one statement per view and table, COMMIT
        CountingCursor.sent.clear()
        bus.execute(Q.get_statistics())
        assert len(CountingCursor.sent) == 7
    finally:
        engine.dispose()
