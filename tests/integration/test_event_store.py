import threading
import uuid

import pytest
from sqlalchemy import text
from workflow_histories import burn_xids_past_a_power_of_ten, burn_xids_to_just_below_a_power_of_ten

from cqrs_core.eventlog.store import EventMetadata, EventStore, LogCursor, NewEvent
from cqrs_core.eventlog.streams import latest_cursors
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import ConcurrencyError, ValidationError

KNOWN = {"ThingHappened", "OtherThingHappened"}


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url)
    yield EventStore(engine, known_event_types=KNOWN)
    engine.dispose()


def meta(**kw):
    return EventMetadata(actor=kw.pop("actor", "alice"), **kw)


def ev(n=1, t="ThingHappened"):
    return [NewEvent(t, {"n": i}) for i in range(n)]


def test_appended_events_read_back_in_stream_order(store):
    store.append("s-1", 0, ev(3), meta())
    store.append("s-1", 3, ev(2), meta())
    stream = store.read_stream("s-1")
    assert [e.version for e in stream] == [1, 2, 3, 4, 5]
    assert [e.payload["n"] for e in stream] == [0, 1, 2, 0, 1]


def test_metadata_round_trips(store):
    cmd, corr, cause = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    [stored] = store.append(
        "s-meta", 0, ev(1), meta(actor="bob", command_id=cmd, correlation_id=corr, causation_id=cause)
    )
    [read] = store.read_stream("s-meta")
    assert read == stored
    assert (read.actor, read.command_id, read.correlation_id, read.causation_id) == ("bob", cmd, corr, cause)
    assert read.event_type == "ThingHappened" and read.schema_version == 1
    assert isinstance(read.event_id, uuid.UUID)
    assert read.recorded_at.tzinfo is not None and read.occurred_at.tzinfo is not None


def test_stale_expected_version_raises_concurrency_error_and_writes_nothing(store):
    store.append("s-c", 0, ev(1), meta())
    with pytest.raises(ConcurrencyError):
        store.append("s-c", 0, ev(1), meta())
    with pytest.raises(ConcurrencyError):  # too high would leave a gap
        store.append("s-c", 5, ev(1), meta())
    assert len(store.read_stream("s-c")) == 1


def test_racing_writers_on_one_stream_one_wins(store):
    store.append("s-race", 0, ev(1), meta())
    results: list[str] = []
    barrier = threading.Barrier(6)

    def writer():
        barrier.wait()
        try:
            store.append("s-race", 1, ev(1), meta())
            results.append("ok")
        except ConcurrencyError:
            results.append("conflict")

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and results.count("conflict") == 5
    assert [e.version for e in store.read_stream("s-race")] == [1, 2]


@pytest.mark.parametrize(
    "stream_id, events, fragment",
    [
        ("", ev(1), "stream id"),
        ("   ", ev(1), "stream id"),
        ("s", [NewEvent("NoSuchEvent", {})], "unknown event type"),
        ("s", [NewEvent("ThingHappened", {"when": object()})], "not JSON-serialisable"),
        ("s", [NewEvent("ThingHappened", {"x": float("nan")})], "not JSON-serialisable"),
        ("s", [NewEvent("ThingHappened", {"x": "nul\x00byte"})], "NUL"),
        ("s", [], "at least one event"),
    ],
)
def test_bad_input_gets_a_clear_error_and_writes_nothing(store, stream_id, events, fragment):
    with pytest.raises(ValidationError) as info:
        store.append(stream_id, 0, events, meta())
    assert fragment in info.value.user_message
    assert store.count() == 0


def test_read_log_pages_through_everything_once(store):
    for i in range(25):
        store.append(f"s-{i}", 0, ev(2), meta())
    seen, cursor = [], None
    while batch := store.read_log(cursor, limit=7):
        seen.extend(e.position for e in batch)
        cursor = batch[-1].cursor
    assert sorted(seen) == seen and len(seen) == 50 == len(set(seen))
    assert store.read_log(seen[9], limit=100)[0].position == seen[10]


def test_reader_past_later_commits_still_receives_an_event_committed_late(store, db_url):
    """Mechanism 1: a transaction that took an earlier position but commits after later ones
    must not be skipped by a reader that has already consumed the later ones."""
    store.append("before", 0, ev(1), meta())
    held_engine = make_engine(db_url)
    held = held_engine.connect()
    tx = held.begin()
    [held_event] = store.append("held", 0, ev(1, "OtherThingHappened"), meta(), conn=held)

    for i in range(5):  # these take higher positions and commit while `held` is open
        store.append(f"after-{i}", 0, ev(1), meta())
    first = store.read_log(None, limit=100)
    cursor = first[-1].cursor
    assert held_event.position not in [e.position for e in first]
    assert [e.stream_id for e in first] == ["before"], "later commits are not read past an open writer"

    tx.commit()
    held.close()
    held_engine.dispose()
    rest = store.read_log(cursor, limit=100)
    got = [e.stream_id for e in rest]
    assert got[0] == "held" and sorted(got[1:]) == [f"after-{i}" for i in range(5)]
    everything = [e.position for e in first + rest]
    assert len(everything) == len(set(everything)) == 7


def test_reader_cursor_that_passed_later_events_gets_the_held_one(store, db_url):
    """Variant where the reader's cursor is already beyond the held event's position."""
    held_engine = make_engine(db_url)
    with held_engine.connect() as held:
        # Force an xid assigned early in `held` (older transaction) ...
        tx = held.begin()
        held.execute(text("SELECT pg_current_xact_id()"))
        # ... then others write and commit first, taking LOWER positions than `held` will.
        store.append("early-0", 0, ev(1), meta())
        store.append("early-1", 0, ev(1), meta())
        [late] = store.append("late", 0, ev(1), meta(), conn=held)
        visible = store.read_log(None, limit=100)
        assert visible == []  # both commits are newer than the open transaction
        tx.commit()
    held_engine.dispose()
    got = store.read_log(None, limit=100)
    assert [e.stream_id for e in got] == ["late", "early-0", "early-1"]
    assert got[0].position == late.position > got[1].position


def test_an_append_from_a_session_whose_process_announces_it_sends_no_notify_of_its_own(db_url):
    """Migration 0016: sessions made with `coalesced_notify=True` (the command bus's) leave the
    NOTIFY to their process's AppendNotifier, so their appending transactions do not take the
    notify queue's lock; `test_append_notifies_listeners` shows every other session still notifies."""
    import select

    listening, coalesced = make_engine(db_url), make_engine(db_url, coalesced_notify=True)
    raw = listening.raw_connection()
    try:
        raw.dbapi_connection.set_isolation_level(0)
        raw.dbapi_connection.cursor().execute("LISTEN cqrs_events")
        EventStore(coalesced).append("s-quiet", 0, ev(1), meta())
        assert select.select([raw.dbapi_connection], [], [], 1.0)[0] == []
    finally:
        raw.close()
        listening.dispose()
        coalesced.dispose()


def test_append_notifies_listeners(store, db_url):
    import select

    engine = make_engine(db_url)
    raw = engine.raw_connection()
    try:
        raw.dbapi_connection.set_isolation_level(0)
        cur = raw.dbapi_connection.cursor()
        cur.execute("LISTEN cqrs_events")
        store.append("s-n", 0, ev(1), meta())
        ready = select.select([raw.dbapi_connection], [], [], 5)
        assert ready[0], "no NOTIFY within 5 s"
        raw.dbapi_connection.poll()
        assert [n.channel for n in raw.dbapi_connection.notifies] == ["cqrs_events"]
    finally:
        raw.close()
        engine.dispose()


def test_history_cannot_be_rewritten(store):
    store.append("s-h", 0, ev(1), meta())
    with store.engine.connect() as c:
        with pytest.raises(Exception, match="append-only"):
            c.execute(text("UPDATE events SET actor = 'mallory'"))
        c.rollback()
        with pytest.raises(Exception, match="append-only"):
            c.execute(text("DELETE FROM events"))
        c.rollback()
        with pytest.raises(Exception, match="append-only"):
            c.execute(text("TRUNCATE events"))
        c.rollback()
    assert store.read_stream("s-h")[0].actor == "alice"


def test_log_cursor_orders_by_transaction_then_position():
    assert LogCursor(5, 100) < LogCursor(6, 1) < LogCursor(6, 2)


def test_log_order_holds_across_a_transaction_id_digit_boundary(store):
    """Transaction ids compared as text would put 1000 before 999 and skip events."""
    if burn_xids_to_just_below_a_power_of_ten(store.engine) is None:
        pytest.skip("the server's next power of ten of transaction ids is too far away")
    for i in range(8):
        store.append(f"digits-{i}", 0, ev(1), meta())
    got = [e.stream_id for e in store.read_log(None, limit=100)]
    assert got == [f"digits-{i}" for i in range(8)]


def test_a_streams_latest_event_is_found_across_a_transaction_id_digit_boundary(store):
    """Transaction ids compared as text would take an event of txid 999 for later than 1000."""
    before = store.append("digits-latest", 0, ev(1), meta())
    boundary = burn_xids_past_a_power_of_ten(store.engine)
    if boundary is None:
        pytest.skip("the server's next power of ten of transaction ids is too far away")
    after = store.append("digits-latest", 1, ev(1), meta())
    assert before[0].txid < boundary <= after[0].txid
    with store.engine.connect() as conn:
        assert latest_cursors(conn, ["digits-latest"]) == {"digits-latest": after[0].cursor}


def test_nul_text_anywhere_in_a_payload_is_refused_and_a_written_backslash_u0000_is_not(store):
    for payload in ({"a": {"b": ["x", "y\x00"]}}, {"k\x00": 1}, {"t": ("ok", {"deep": "\x00"})}):
        with pytest.raises(ValidationError) as info:
            store.append("s", 0, [NewEvent("ThingHappened", payload)], meta())
        assert "NUL" in info.value.user_message
    # Refused with every other problem of the append, as validate lists them.
    with pytest.raises(ValidationError) as info:
        store.append("s", 0, [NewEvent("NoSuchEvent", {}), NewEvent("ThingHappened", {"x": "\x00"})], meta())
    assert "unknown event type" in info.value.user_message and "NUL" in info.value.user_message
    with pytest.raises(ValidationError) as info:  # NUL and a value json cannot write: NUL is named
        store.append("s", 0, [NewEvent("ThingHappened", {"x": "\x00", "when": object()})], meta())
    assert "NUL" in info.value.user_message
    assert store.count() == 0
    stored = store.append("s", 0, [NewEvent("ThingHappened", {"x": "C:\\u0000 is text"})], meta())
    assert store.read_stream("s")[0].payload == {"x": "C:\\u0000 is text"} == stored[0].payload
