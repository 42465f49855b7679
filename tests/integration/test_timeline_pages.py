"""A workflow's timeline and its event stream are read a page at a time (issue 12, item 14)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from cqrs_core import CommandFactory, QueryFactory
from cqrs_core.domain.events import stream_id_for
from cqrs_core.infra.errors import ValidationError
from cqrs_core.read.queries import ACTIVITY_PAGE_SIZE, MAX_ACTIVITY_PAGE_SIZE

Q = QueryFactory()
MANY = 1234  # more than a dozen pages of 100


def created_workflow(service) -> uuid.UUID:
    result = service.execute_command(
        CommandFactory("alice").create_research_workflow(
            title="Long-running study", research_question="Does it ever end?", methodology="exploratory"
        )
    )
    service.projections.catch_up()
    return result.aggregate_id


def add_activity(service, wid: uuid.UUID, n: int) -> None:
    """`n` timeline rows for `wid` written straight into the read model, interleaved with as many
    rows of another workflow (the projection has its own tests; the query is under test here)."""
    other = uuid.uuid4()
    with service.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workflow_activity (position, workflow_id, event_type, actor, occurred_at, summary) "
                "SELECT 1000000 + i, CASE WHEN i % 2 = 0 THEN CAST(:w AS uuid) ELSE CAST(:o AS uuid) END, "
                "'TaskStarted', 'alice', now(), 'alice started task ' || i "
                "FROM generate_series(1, 2 * :n) AS i"
            ),
            {"w": str(wid), "o": str(other), "n": n},
        )
        conn.execute(text("ANALYZE workflow_activity"))


def positions_of(service, wid: uuid.UUID) -> list[int]:
    with service.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT position FROM workflow_activity WHERE workflow_id = :w ORDER BY position DESC"),
                {"w": str(wid)},
            ).scalars()
        )


def test_detail_returns_one_page_of_the_timeline_and_a_cursor_that_walks_it_without_gaps_or_repeats(service):
    wid = created_workflow(service)
    add_activity(service, wid, MANY)
    everything = positions_of(service, wid)
    assert len(everything) > MANY

    first = service.execute_query(Q.get_workflow(wid), cache=False)
    assert len(first.activity) == ACTIVITY_PAGE_SIZE
    assert first.activity_total == len(everything)
    assert [a["position"] for a in first.activity] == sorted(
        everything[:ACTIVITY_PAGE_SIZE]
    )  # the newest page
    assert first.workflow["title"] == "Long-running study"

    walked, cursor, pages = [], None, 0
    while True:
        page = service.execute_query(
            Q.get_workflow(wid, activity_before=cursor, activity_limit=100), cache=False
        )
        got = [a["position"] for a in page.activity]
        assert got == sorted(got) and 0 < len(got) <= 100  # each page in position order
        assert page.activity_total == len(everything)
        walked.extend(reversed(got))
        pages += 1
        if page.activity_next_before is None:
            break
        assert page.activity_next_before == got[0]
        cursor = page.activity_next_before
    assert walked == everything  # newest to oldest, every entry once
    assert pages == -(-len(everything) // 100)


def test_a_workflow_with_a_short_timeline_has_no_older_page(service):
    wid = created_workflow(service)
    detail = service.execute_query(Q.get_workflow(wid), cache=False)
    assert detail.activity_total == len(detail.activity) >= 1
    assert detail.activity_next_before is None


def test_timeline_page_size_is_bounded():
    with pytest.raises(ValidationError):
        Q.get_workflow(uuid.uuid4(), activity_limit=MAX_ACTIVITY_PAGE_SIZE + 1)
    with pytest.raises(ValidationError):
        Q.get_workflow(uuid.uuid4(), activity_before=0)


def add_stream_events(service, wid: uuid.UUID, n: int) -> None:
    """Versions 2..n+1 of the workflow's stream, interleaved in the log with another stream's
    events, written straight into `events` (never projected: only the log query reads them)."""
    with service.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO events (stream_id, version, event_type, payload, event_id, actor) "
                "SELECT CASE WHEN s = 0 THEN :mine ELSE :other END, i + 1, 'WorkflowPaused', '{}'::jsonb, "
                "gen_random_uuid(), 'alice' "
                "FROM generate_series(1, :n) AS i, generate_series(0, 1) AS s ORDER BY i, s"
            ),
            {"mine": stream_id_for(str(wid)), "other": stream_id_for(str(uuid.uuid4())), "n": n},
        )
        conn.execute(text("ANALYZE events"))


def test_a_workflows_event_stream_pages_newest_first_and_walks_to_the_end_without_gaps_or_repeats(service):
    wid = created_workflow(service)
    add_stream_events(service, wid, MANY)
    stream = stream_id_for(str(wid))
    with service.engine.connect() as conn:
        everything = list(
            conn.execute(
                text("SELECT position FROM events WHERE stream_id = :s ORDER BY position DESC"), {"s": stream}
            ).scalars()
        )
    assert len(everything) == MANY + 1

    walked, cursor = [], None
    while True:
        page = service.execute_query(Q.get_event_log(stream_id=stream, before=cursor, limit=100), cache=False)
        assert page.total == len(everything)
        got = [e["position"] for e in page.events]
        assert got == sorted(got, reverse=True) and 0 < len(got) <= 100
        assert {e["stream_id"] for e in page.events} == {stream}
        walked.extend(got)
        if page.next_before is None:
            break
        cursor = page.next_before
    assert walked == everything

    forward, cursor = [], 0  # and oldest first, as the log explorer reads it
    while cursor is not None:
        page = service.execute_query(Q.get_event_log(stream_id=stream, after=cursor, limit=100), cache=False)
        forward.extend(e["position"] for e in page.events)
        cursor = page.next_after
    assert forward == everything[::-1]


def test_an_event_stream_cursor_from_another_stream_still_means_below_that_position(service):
    wid = created_workflow(service)
    add_stream_events(service, wid, 10)
    stream = stream_id_for(str(wid))
    with service.engine.connect() as conn:
        mine = list(
            conn.execute(
                text("SELECT position FROM events WHERE stream_id = :s ORDER BY position DESC"), {"s": stream}
            ).scalars()
        )
        foreign = conn.execute(
            text("SELECT min(position) FROM events WHERE stream_id <> :s AND position > :p"),
            {"s": stream, "p": mine[5]},
        ).scalar_one()
    page = service.execute_query(Q.get_event_log(stream_id=stream, before=foreign, limit=100), cache=False)
    assert [e["position"] for e in page.events] == [p for p in mine if p < foreign]
    page = service.execute_query(Q.get_event_log(stream_id=stream, after=foreign, limit=100), cache=False)
    assert [e["position"] for e in page.events] == sorted(p for p in mine if p > foreign)


def test_the_global_log_has_no_stream_total(service):
    created_workflow(service)
    page = service.execute_query(Q.get_event_log(limit=10), cache=False)
    assert page.total is None and page.events
