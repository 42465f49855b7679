"""One append of one event (almost every command) has a statement of its own
(`EventStore._append_one`, issue 18): the same guarantees as the general batch statement."""

import datetime as dt
import math
import uuid

import psycopg2.errors
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cqrs_core.eventlog.store import CommandRecord, EventMetadata, EventStore, NewEvent, StreamAppend
from cqrs_core.infra.db import DriverConnection, make_engine
from cqrs_core.infra.errors import ConcurrencyError, ValidationError


@pytest.fixture(params=["prepared", "plain"])
def store(db_url, request):
    engine = make_engine(db_url, autocommit=True, prepare=request.param == "prepared")
    yield EventStore(engine)
    engine.dispose()


@pytest.fixture
def one_statement_only(monkeypatch):
    """Fail if an append goes the general way: these tests are about the one-append statement."""

    def general(*args, **kwargs):
        raise AssertionError("the general statement was used")

    monkeypatch.setattr(EventStore, "_append_general", general)


def command(stream: str, cmd: uuid.UUID | None = None, actor: str = "alice"):
    cmd = cmd or uuid.uuid4()
    corr = uuid.uuid4()
    meta = EventMetadata(actor=actor, command_id=cmd, correlation_id=corr, causation_id=cmd)
    result = {
        "command_id": str(cmd),
        "command_type": "CompleteTask",
        "aggregate_id": stream,
        "events": [],
        "position": 0,
        "correlation_id": str(corr),
        "duration_ms": 0.5,
        "fingerprint": "ab" * 32,
    }
    return meta, CommandRecord(cmd, "CompleteTask", stream, result)


def append(store, stream, expected, payload=None, conn=None, cmd=None, actor="alice"):
    meta, record = command(stream, cmd, actor)
    return store.append(
        stream,
        expected,
        [NewEvent("ThingHappened", payload or {"n": expected})],
        meta,
        conn=conn,
        record=record,
        timeout_ms=5000,
    )


def counts(store) -> tuple[int, int]:
    with store.engine.connect() as c:
        return (
            c.execute(text("SELECT count(*) FROM events")).scalar_one(),
            c.execute(text("SELECT count(*) FROM command_log")).scalar_one(),
        )


def log_row(store, command_id):
    with store.engine.connect() as c:
        return c.execute(
            text(
                "SELECT command_type, actor, aggregate_id, correlation_id, result FROM command_log "
                "WHERE command_id = :id"
            ),
            {"id": command_id},
        ).one()


@pytest.mark.usefixtures("one_statement_only")
def test_a_wrong_expected_version_writes_nothing_and_raises_concurrency_error(store):
    for expected in (1, 3):  # a fresh stream is at 0
        with pytest.raises(ConcurrencyError) as info:
            append(store, "s-fresh", expected)
        assert info.value.__cause__ is None
    append(store, "s-1", 0)
    append(store, "s-1", 1)
    before = counts(store)
    for expected in (0, 1, 3, 7):  # too low, too high (3 would leave a gap)
        # Refused by the guard (no row), as the general statement refuses it: not by the unique
        # version, which would let 3 and 7 through and fail the statement for 0 and 1.
        with pytest.raises(ConcurrencyError) as info:
            append(store, "s-1", expected)
        assert info.value.__cause__ is None
        with pytest.raises(ConcurrencyError) as info:  # on a driver connection, as the command bus sends it
            proxied = store.engine.raw_connection()
            conn = DriverConnection(store.engine, proxied)
            try:
                append(store, "s-1", expected, conn=conn)
            finally:
                conn.release()
        assert info.value.__cause__ is None
    assert counts(store) == before
    assert [e.version for e in store.read_stream("s-1")] == [1, 2]


@pytest.mark.usefixtures("one_statement_only")
def test_after_the_log_was_emptied_a_cached_higher_version_writes_nothing(store):
    append(store, "s-reset", 0)
    append(store, "s-reset", 1)
    with store.engine.connect() as c:  # what `demo reset` does (the test's login is the owner)
        c.execute(text("SELECT public.cqrs_reset_all('tester')"))
    for cached in (1, 2):  # a version that existed, and the stream's last one
        with pytest.raises(ConcurrencyError) as info:
            append(store, "s-reset", cached)
        assert info.value.__cause__ is None
    assert counts(store) == (0, 0)
    assert append(store, "s-reset", 0)[0].version == 1


@pytest.mark.usefixtures("one_statement_only")
def test_a_repeated_command_id_raises_the_command_logs_unique_violation_and_writes_nothing(store):
    cmd = uuid.uuid4()
    append(store, "s-twin", 0, cmd=cmd)
    before = counts(store)
    with pytest.raises(IntegrityError) as info:  # what CommandBus._with_retries takes for a twin
        append(store, "s-twin", 1, cmd=cmd)
    assert isinstance(info.value.orig, psycopg2.errors.UniqueViolation) and "command_log" in str(
        info.value.orig
    )
    assert counts(store) == before


def test_the_command_log_row_is_the_general_statements(store):
    meta, record = command("s-same")
    [one] = store.append("s-same", 0, [NewEvent("ThingHappened", {"n": 1})], meta, record=record)
    # The general statement, for the same append with another command id.
    meta2 = EventMetadata(meta.actor, uuid.uuid4(), meta.correlation_id, meta.causation_id)
    record2 = CommandRecord(meta2.command_id, record.command_type, record.aggregate_id, record.result)
    with store.engine.connect() as conn:
        [[other]] = store._append_general(
            conn, [StreamAppend("s-same", 1, [NewEvent("ThingHappened", {"n": 1})], meta2)], [record2], None
        )
    mine, theirs = log_row(store, meta.command_id), log_row(store, meta2.command_id)
    assert mine[:4] == theirs[:4] == ("CompleteTask", "alice", "s-same", meta.correlation_id)
    events = [{"event_type": "ThingHappened", "version": 1, "position": one.position}]
    assert mine.result == {**record.result, "events": events, "position": one.position}
    events2 = [{"event_type": "ThingHappened", "version": 2, "position": other.position}]
    assert theirs.result == {**record.result, "events": events2, "position": other.position}


@pytest.mark.usefixtures("one_statement_only")
def test_the_event_row_and_what_comes_back_are_the_appends(store):
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    cause = uuid.uuid4()
    meta = EventMetadata("bob", uuid.uuid4(), uuid.uuid4(), cause, occurred_at=when)
    [stored] = store.append("s-row", 0, [NewEvent("ThingHappened", {"x": [1, "ü"]}, 3)], meta)
    [read] = store.read_stream("s-row")
    assert read == stored
    assert (read.version, read.schema_version, read.payload, read.causation_id) == (
        1,
        3,
        {"x": [1, "ü"]},
        cause,
    )
    assert read.occurred_at == when and read.recorded_at.tzinfo is not None
    [again] = store.append("s-row", 1, [NewEvent("ThingHappened", {})], EventMetadata("bob"))
    assert (again.version, again.command_id, again.causation_id) == (2, None, None)
    assert store.read_stream("s-row", 1) == [again]


def test_nul_and_bad_json_are_refused_as_before(store, monkeypatch):
    for payload in ({"a": ["x\x00"]}, {"k\x00": 1}):
        with pytest.raises(ValidationError) as info:
            append(store, "s-nul", 0, payload)
        assert "NUL" in info.value.user_message
    for payload in ({"x": math.nan}, {"when": object()}):
        with pytest.raises(ValidationError) as info:
            append(store, "s-json", 0, payload)
        assert "JSON" in info.value.user_message
    assert counts(store) == (0, 0)
    [stored] = append(store, "s-nul", 0, {"x": "C:\\u0000 is text"})
    assert store.read_stream("s-nul")[0].payload == {"x": "C:\\u0000 is text"} == stored.payload
    # Text with a NUL outside the payload goes the general way, and fails there as it always has.
    used = []
    general = EventStore._append_general
    monkeypatch.setattr(
        EventStore, "_append_general", lambda self, *a, **k: used.append(1) or general(self, *a, **k)
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever the general statement raises
        append(store, "s-nul", 1, actor="al\x00ice")
    assert used == [1]
    assert counts(store) == (1, 1)
