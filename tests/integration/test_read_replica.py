"""The query side on a real streaming replica (issue 19, part 1): a hot standby made with the
wheel's `pg_basebackup` (tests/replication.py), read through CQRS_READ_DATABASE_URL.

Read-your-writes waits for the standby to replay the change (replay paused on purpose proves
it waits rather than answering stale), every query runs on the read-only standby, and a standby
that is down or too far behind falls back to the primary or is refused, as
CQRS_READ_REPLICA_FALLBACK says."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
from services import build_service
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from waiting import wait_until

from cqrs_core import CommandFactory, QueryFactory
from cqrs_core.cli import main
from cqrs_core.infra.config import get_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import ReplicaUnavailableError, StaleReadError, ValidationError
from cqrs_core.infra.metrics import MetricsRecorder
from cqrs_core.ops.health import replica_check
from cqrs_core.read.handlers import ROUTES
from cqrs_core.read.query_bus import QueryBus
from cqrs_core.read.replica import ReadReplica, measure

Q = QueryFactory()
# Long enough that a wait which ended early would show; far below the query timeout.
WAIT_PROOF_SECONDS = 1.0


@pytest.fixture
def replica_service(replica_db):
    """`make(**settings)`: a service writing to the primary and reading from the standby."""
    made = []

    def make(**settings):
        svc = build_service(replica_db.primary_url, read_database_url=replica_db.standby_url, **settings)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.projections.close()
        svc.close()


def create(svc, title: str = "Soil moisture and yields", actor: str = "alice"):
    return svc.execute_command(
        CommandFactory(actor=actor).create_research_workflow(
            title=title, research_question="Does it matter?", methodology="case_study"
        )
    )


def standby_titles(replica_db) -> set[str]:
    """What the standby's read model holds, read directly (not through the console)."""
    engine = create_engine(replica_db.standby_url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            return set(c.execute(text("SELECT title FROM workflow_summary")).scalars())
    finally:
        engine.dispose()


def standby_commits(replica_db) -> int:
    """Transactions the standby itself has committed in this database (its own statistics)."""
    engine = create_engine(replica_db.standby_url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            c.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(
                c.execute(
                    text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                ).scalar_one()
            )
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the fixture itself


def test_the_standby_is_a_streaming_hot_standby_of_the_primary(replicated_cluster, replica_db):
    primary = create_engine(replica_db.primary_url, poolclass=NullPool)
    standby = create_engine(replica_db.standby_url, poolclass=NullPool)
    try:
        with primary.connect() as c:
            assert c.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is False
            states = c.execute(text("SELECT state, usename FROM pg_stat_replication")).all()
            assert [(s.state, s.usename) for s in states] == [("streaming", "replicator")]
        with standby.connect() as c:
            assert c.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True
            with pytest.raises(Exception, match="read-only transaction"):
                c.execute(text("INSERT INTO projection_checkpoints (name) VALUES ('nobody')"))
    finally:
        primary.dispose()
        standby.dispose()


# ---------------------------------------------------------------- read-your-writes


def test_read_your_writes_waits_for_a_paused_replica_and_answers_once_it_replays(
    replicated_cluster, replica_db, replica_service
):
    svc = replica_service(query_timeout=30)
    replicated_cluster.pause_replay()
    result = create(svc, "Written while the replica waits")
    svc.projections.catch_up()  # the primary's read model and checkpoints have the change

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            svc.execute_query, Q.get_workflow(result.aggregate_id), min_position=result.position
        )
        # The primary could answer now; the replica cannot: the query must still be waiting.
        with pytest.raises(FutureTimeout):
            answer.result(timeout=WAIT_PROOF_SECONDS)
        assert "Written while the replica waits" not in standby_titles(replica_db)

        replicated_cluster.resume_replay()
        detail = answer.result(timeout=20)

    assert detail.workflow["title"] == "Written while the replica waits"
    assert svc.replica.reading_from == "replica"


def test_read_your_writes_times_out_with_a_typed_error_while_replay_stays_paused(
    replicated_cluster, replica_db, replica_service
):
    svc = replica_service(query_timeout=1.5)
    replicated_cluster.pause_replay()
    result = create(svc)
    svc.projections.catch_up()

    started = time.monotonic()
    with pytest.raises(
        StaleReadError, match=r"^The read replica \(.*\) has not replayed your change yet"
    ) as err:
        svc.execute_query(Q.get_workflow_list(), min_position=result.position)

    assert 1.4 < time.monotonic() - started < 8  # the timeout, not a hang
    assert f"your change is at {result.position}" in err.value.user_message
    assert err.value.user_message.endswith("try again in a moment.")


def test_a_change_the_projections_have_not_applied_is_blamed_on_the_read_model_not_the_replica(
    replica_db, replica_service
):
    svc = replica_service(query_timeout=0.5)
    result = create(svc)  # no projection runs: the primary's read model is behind too

    with pytest.raises(
        StaleReadError, match=r"^The read model \(.*\) has not caught up with your change yet"
    ):
        svc.execute_query(Q.get_workflow_list(), min_position=result.position)


def test_a_position_the_primary_never_wrote_is_still_refused_at_once(replica_db, replica_service):
    svc = replica_service()
    with pytest.raises(ValidationError, match="There is no event at position 999999"):
        svc.execute_query(Q.get_workflow_list(), min_position=999_999)


# ---------------------------------------------------------------- queries never write


def every_query(workflow_id: str, correlation_id: uuid.UUID, alert_id: uuid.UUID) -> dict[type, object]:
    return {
        type(q): q
        for q in (
            Q.get_workflow_list(),
            Q.search_workflows("moisture"),
            Q.get_workflow(workflow_id),
            Q.get_statistics(),
            Q.get_overview(),
            Q.get_event_log(),
            Q.get_correlation_trace(correlation_id),
            Q.get_audit_trail(),
            Q.get_alerts(),
            Q.get_alert_deliveries(),
            Q.get_alert_history(alert_id),
        )
    }


def test_every_registered_query_runs_on_the_read_only_standby(
    replicated_cluster, replica_db, replica_service
):
    writer = replica_service()
    result = create(writer)
    alert_id = uuid.uuid4()
    writer.execute_command(
        CommandFactory(actor="olga", role="operator").raise_alert(
            alert_id=alert_id,
            rule="parked_events",
            subject="task_summary",
            severity="warning",
            summary="1 parked",
        )
    )
    writer.projections.catch_up()
    writer.projections.refresh_views()
    replicated_cluster.wait_replayed()
    # Refused rather than answered from the primary: every answer below comes from the standby.
    svc = replica_service(read_replica_fallback="error", cache_enabled=False)
    queries = every_query(result.aggregate_id, result.correlation_id, alert_id)
    assert set(queries) == set(ROUTES), "a query route without an example here"
    before = standby_commits(replica_db)

    answers = {kind.__name__: svc.execute_query(query) for kind, query in queries.items()}

    assert answers["GetWorkflow"].workflow["title"] == "Soil moisture and yields"
    assert answers["GetWorkflowList"].total == 1
    assert answers["SearchWorkflows"].total == 1
    assert answers["GetCorrelationTrace"].events
    assert [a["alert_id"] for a in answers["GetAlerts"].open] == [str(alert_id)]
    assert answers["GetAlertHistory"].steps
    assert svc.query_metrics.errors_by_category() == {}
    # Each answer was a transaction of the standby's own (its backends report them within seconds).
    wait_until(
        lambda: standby_commits(replica_db) - before >= len(queries),
        15,
        "the standby's statistics to count a transaction per query",
        interval=0.2,
    )


# ---------------------------------------------------------------- a standby that is down


def test_a_stopped_standby_falls_back_to_the_primary(replicated_cluster, replica_db, replica_service):
    svc = replica_service(cache_enabled=False)
    create(svc, "Before the standby stopped")
    svc.projections.catch_up()
    replicated_cluster.wait_replayed()
    assert svc.execute_query(Q.get_workflow_list()).total == 1  # from the standby
    replicated_cluster.stop_standby()

    result = create(svc, "After the standby stopped")
    svc.projections.catch_up()
    page = svc.execute_query(Q.get_workflow_list(), min_position=result.position)

    assert page.total == 2  # only the primary has the second one
    assert svc.replica.reading_from == "primary"
    line = replica_check(svc.replica)(svc.engine)
    assert line.status == "degraded" and line.detail.startswith("unreachable")
    assert "queries read from the primary" in line.detail

    replicated_cluster.start_standby()
    replicated_cluster.wait_replayed()
    wait_until(lambda: svc.replica.reading_from == "replica", 10, "queries to read from the standby again")
    assert svc.execute_query(Q.get_workflow_list()).total == 2


def test_a_stopped_standby_gives_a_typed_one_sentence_error_when_fallback_is_error(
    replicated_cluster, replica_db, replica_service
):
    svc = replica_service(read_replica_fallback="error", cache_enabled=False)
    replicated_cluster.stop_standby()

    with pytest.raises(ReplicaUnavailableError) as err:
        svc.execute_query(Q.get_workflow_list())

    assert err.value.user_message == (
        "The read replica cannot be reached, so nothing could be read; try again in a moment."
    )
    assert err.value.status == 503
    line = replica_check(svc.replica)(svc.engine)
    assert line.status == "unhealthy" and "queries are refused" in line.detail
    assert svc.query_metrics.errors_by_category() == {"infrastructure": 1}


@pytest.mark.parametrize("fallback", ["primary", "error"])
def test_a_connection_the_standby_drops_under_a_query_goes_where_the_fallback_says(
    replicated_cluster, replica_db, fallback
):
    """The standby stops between two queries, before the replica is measured again: the query
    finds its pooled connection dead, and is answered by the primary or refused at once."""
    primary = make_engine(replica_db.primary_url)
    standby = make_engine(replica_db.standby_url, pre_ping=False)
    replica = ReadReplica(standby, primary, fallback=fallback, max_lag_seconds=30, check_seconds=3600)
    bus = QueryBus(
        primary,
        MetricsRecorder("query"),
        timeout=5,
        caching=False,
        cache_size=10,
        default_ttl=1,
        replica=replica,
    )
    try:
        assert bus.execute(Q.get_workflow_list()).total == 0  # a pooled connection to the standby
        replicated_cluster.stop_standby()

        if fallback == "primary":
            assert bus.execute(Q.get_workflow_list()).total == 0
        else:
            with pytest.raises(ReplicaUnavailableError, match="cannot be reached"):
                bus.execute(Q.get_workflow_list())
        assert not replica.state().reachable  # marked at once, without waiting for a measurement
    finally:
        primary.dispose()
        standby.dispose()


# ---------------------------------------------------------------- a standby far behind


def paused_beyond(replicated_cluster, svc, max_lag: float):
    """Pause replay, write on the primary, and wait until the standby is more than `max_lag` behind."""
    replicated_cluster.pause_replay()
    result = create(svc, "Written while replay is paused")
    svc.projections.catch_up()
    wait_until(
        lambda: (svc.replica.state(max_age=0).lag_seconds or 0) > max_lag,
        max_lag + 15,
        f"the standby to fall more than {max_lag:g} s behind",
        interval=0.2,
    )
    return result


def test_a_standby_beyond_the_max_lag_falls_back_to_the_primary(
    replicated_cluster, replica_db, replica_service
):
    svc = replica_service(read_replica_max_lag_seconds=1, cache_enabled=False)
    result = paused_beyond(replicated_cluster, svc, 1)

    detail = svc.execute_query(Q.get_workflow(result.aggregate_id))  # only the primary has it

    assert detail.workflow["title"] == "Written while replay is paused"
    assert "Written while replay is paused" not in standby_titles(replica_db)
    line = replica_check(svc.replica)(svc.engine)
    assert line.status == "degraded"
    assert line.metrics["replay_paused"] is True and line.metrics["lag_bytes"] > 0
    assert line.metrics["lag_seconds"] > 1 and line.metrics["reading_from"] == "primary"
    assert "replay paused" in line.detail and "more than the 1 s allowed" in line.detail

    replicated_cluster.resume_replay()
    wait_until(lambda: svc.replica.reading_from == "replica", 10, "queries to read from the standby again")
    assert replica_check(svc.replica)(svc.engine).status == "healthy"


def test_a_standby_beyond_the_max_lag_is_refused_in_one_sentence_when_fallback_is_error(
    replicated_cluster, replica_db, replica_service
):
    svc = replica_service(read_replica_max_lag_seconds=1, read_replica_fallback="error", cache_enabled=False)
    result = paused_beyond(replicated_cluster, svc, 1)

    with pytest.raises(ReplicaUnavailableError) as err:
        svc.execute_query(Q.get_workflow(result.aggregate_id))

    message = err.value.user_message
    assert message.startswith("The read replica is ") and message.endswith(
        "behind the primary (more than the 1 s allowed), so nothing was read; try again in a moment."
    )
    assert message.count(".") <= 2  # one sentence: the lag's decimal point and the full stop
    assert replica_check(svc.replica)(svc.engine).status == "unhealthy"


def test_a_read_url_that_is_not_a_standby_reads_there_with_no_lag(replica_db):
    """CQRS_READ_DATABASE_URL may name a server that is not in recovery: nothing to measure."""
    svc = build_service(
        replica_db.primary_url, read_database_url=replica_db.primary_url + "?application_name=x"
    )
    try:
        state = svc.replica.state()
        assert state.reachable and not state.standby and state.lag_seconds == 0
        assert replica_check(svc.replica)(svc.engine).status == "healthy"
        assert svc.execute_query(Q.get_workflow_list()).total == 0
    finally:
        svc.close()


def test_health_command_reports_the_replicas_lag_and_a_refusing_replica_down_as_unhealthy(
    replicated_cluster, replica_db, use_database, monkeypatch, capsys
):
    use_database(replica_db.primary_url)
    monkeypatch.setenv("CQRS_READ_DATABASE_URL", replica_db.standby_url)
    get_settings.cache_clear()

    assert main(["health", "--json"]) == 0
    line = {c["name"]: c for c in json.loads(capsys.readouterr().out)["components"]}["read replica"]
    assert line["status"] == "healthy" and line["detail"].startswith("streaming")
    # The primary writes WAL now and then by itself (autovacuum, checkpoints): a few bytes may be on their way.
    assert line["metrics"]["lag_bytes"] >= 0 and line["metrics"]["lag_seconds"] < 30
    assert line["metrics"]["replay_paused"] is False and line["metrics"]["reading_from"] == "replica"

    replicated_cluster.stop_standby()
    monkeypatch.setenv("CQRS_READ_REPLICA_FALLBACK", "error")
    get_settings.cache_clear()

    assert main(["health"]) == 1
    out = capsys.readouterr().out
    assert "read replica" in out and "unreachable" in out and "queries are refused" in out
    assert replica_db.standby_url.split("@")[1] not in out  # no URL in the report


def test_a_measurement_beyond_the_max_lag_is_taken_again_before_it_counts(replicated_cluster, replica_db):
    """WAL that has just arrived after a quiet spell reads as the whole spell behind until it is
    replayed (milliseconds): one measurement beyond the allowed lag is not enough to leave the replica."""
    standby = create_engine(replica_db.standby_url, poolclass=NullPool)  # one transaction per measurement
    primary = make_engine(replica_db.primary_url)
    replica = ReadReplica(standby, primary, fallback="primary", max_lag_seconds=1)
    stats = create_engine(replicated_cluster.standby_url("postgres"), poolclass=NullPool)

    def transactions() -> int:  # the test database's, read from another database of the standby
        with stats.connect() as c:
            c.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(
                c.execute(
                    text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"),
                    {"d": replica_db.name},
                ).scalar_one()
            )

    def measurements(ask) -> int:
        before = transactions()
        ask()
        wait_until(lambda: transactions() > before, 15, "the measurement to show in the statistics")
        time.sleep(0.5)  # a second measurement would have ended by now: it is what is being counted
        return transactions() - before

    try:
        measure(standby)  # the engine's first connection also asks the server what it is
        one = measurements(lambda: replica.state(max_age=0))  # the transactions of one measurement
        replicated_cluster.pause_replay()
        with primary.begin() as c:
            c.execute(text("CREATE TABLE written_while_paused (id int)"))
        wait_until(
            lambda: (measure(standby).lag_seconds or 0) > 1,
            15,
            "the standby to fall 1 s behind",
            interval=0.2,
        )
        assert measurements(lambda: replica.state(max_age=0)) == 2 * one
        assert not replica.state().within(1)
    finally:
        stats.dispose()
        standby.dispose()
        primary.dispose()
