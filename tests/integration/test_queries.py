import itertools
import threading
import time
import uuid
from datetime import date

import pytest
from services import build_service
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from workflow_histories import History

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.domain import events as ev
from cqrs_core.eventlog.cursors import LogCursor
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import (
    NotFoundError,
    RateLimitedError,
    StaleReadError,
    TimeoutError_,
    ValidationError,
)
from cqrs_core.read.queries import MAX_SEARCH_LENGTH, MAX_SEARCH_TERMS, SORT_COLUMNS

Q = QueryFactory()
N_WORKFLOWS = 20_000


# 20,000 read-model rows generated in SQL: the list and search handlers are under test here,
# not the projections (those have their own tests), so the rows are written directly.
SEED_SQL = """
INSERT INTO workflow_summary (workflow_id, title, research_question, methodology, status, priority, priority_rank,
    owner, tags, due_date, created_at, started_at, finished_at, duration_seconds, task_total, task_completed,
    progress_pct, last_activity_at, version)
SELECT md5('wf' || i)::uuid,
       (ARRAY['Sleep and memory', 'Graph neural networks', 'Microplastics in rivers', 'Remote work and output',
              'Gut flora and mood'])[1 + i % 5] || ' study ' || i,
       'What is the effect of ' || (ARRAY['sleep', 'graphs', 'plastics', 'remote work', 'diet'])[1 + i % 5]
           || ' on outcome ' || (i % 97) || '?',
       (ARRAY['systematic_review', 'meta_analysis', 'exploratory', 'comparative_analysis', 'experimental',
              'case_study'])[1 + i % 6],
       (ARRAY['draft', 'running', 'paused', 'completed', 'failed', 'cancelled'])[1 + (i * 7) % 6],
       (ARRAY['low', 'normal', 'high', 'urgent'])[1 + (i * 3) % 4], (i * 3) % 4,
       (ARRAY['alice', 'bob', 'carol', 'dan'])[1 + i % 4],
       CASE WHEN i % 3 = 0 THEN ARRAY['ai', 'health'] WHEN i % 3 = 1 THEN ARRAY['ai'] ELSE ARRAY[]::text[] END,
       CASE WHEN i % 4 = 0 THEN NULL ELSE date '2026-01-01' + (i % 300) END,
       timestamptz '2026-01-01 00:00:00+00' + (i % 330) * interval '1 day' + (i % 1000) * interval '1 second',
       CASE WHEN i % 2 = 0 THEN timestamptz '2026-02-01 00:00:00+00' + i * interval '1 second' END,
       CASE WHEN i % 5 = 0 THEN timestamptz '2026-03-01 00:00:00+00' + i * interval '1 second' END,
       CASE WHEN i % 5 = 0 THEN (i % 1234)::float END,
       i % 13, i % 7, CASE WHEN i % 13 = 0 THEN 0 ELSE round(100.0 * (i % 7) / (i % 13)) END,
       timestamptz '2026-06-01 00:00:00+00' + (i % 5000) * interval '1 minute', 1
FROM generate_series(1, :n) AS i
"""


@pytest.fixture
def seeded(service):
    with service.engine.begin() as c:
        c.execute(text(SEED_SQL), {"n": N_WORKFLOWS})
        c.execute(text("ANALYZE workflow_summary"))
    return service


FILTER_SETS = [
    {},
    {"status": ["running"]},
    {"status": ["completed", "failed"], "methodology": ["meta_analysis"]},
    {"priority": ["urgent"], "owner": "bob"},
    {"tags": ["ai", "health"]},
    {"tags": ["ai"], "status": ["draft"]},
    {"created_from": date(2026, 3, 1), "created_to": date(2026, 3, 31)},
    {"owner": "nobody"},
]


def direct_ids(conn, f, sort, descending, limit, offset):
    where, params = ["true"], {}
    for key in ("status", "methodology", "priority"):
        if key in f:
            where.append(f"{key} = ANY(:{key})")
            params[key] = list(f[key])
    if "owner" in f:
        where.append("owner = :owner")
        params["owner"] = f["owner"]
    for i, tag in enumerate(f.get("tags", [])):
        where.append(f":tag{i} = ANY(tags)")
        params[f"tag{i}"] = tag
    if "created_from" in f:
        where.append("created_at::date >= :cf")  # the server runs in UTC for these connections
        params["cf"] = f["created_from"]
    if "created_to" in f:
        where.append("created_at::date <= :ct")
        params["ct"] = f["created_to"]
    col = "priority_rank" if sort == "priority" else sort
    d = "DESC" if descending else "ASC"
    clause = " AND ".join(where)
    rows = conn.execute(
        text(
            f"SELECT workflow_id FROM workflow_summary WHERE {clause} "
            f"ORDER BY {col} {d} NULLS LAST, workflow_id {d} LIMIT {limit} OFFSET {offset}"
        ),
        params,
    )
    total = conn.execute(text(f"SELECT count(*) FROM workflow_summary WHERE {clause}"), params).scalar_one()
    return [r[0] for r in rows], total


def test_every_filter_and_sort_matches_direct_sql_over_20000_workflows(seeded):
    checked = 0
    with seeded.engine.connect() as conn:
        conn.exec_driver_sql("SET TIME ZONE 'UTC'")
        for f, sort, descending in itertools.product(FILTER_SETS, SORT_COLUMNS, (True, False)):
            for page in (1, 7):
                result = seeded.execute_query(
                    Q.get_workflow_list(page=page, page_size=25, sort=sort, descending=descending, **f),
                    cache=False,
                )
                expected, total = direct_ids(conn, f, sort, descending, 25, (page - 1) * 25)
                assert [r["workflow_id"] for r in result.items] == expected, (f, sort, descending, page)
                assert result.total == total
                checked += 1
    assert checked == len(FILTER_SETS) * len(SORT_COLUMNS) * 2 * 2


def test_deep_page_of_20000_returns_the_right_rows(seeded):
    page = seeded.execute_query(Q.get_workflow_list(page=500, page_size=20), cache=False)
    assert page.total == N_WORKFLOWS and page.page_count == 1000 and len(page.items) == 20
    with seeded.engine.connect() as conn:
        expected, _ = direct_ids(conn, {}, "created_at", True, 20, 499 * 20)
    assert [r["workflow_id"] for r in page.items] == expected


def test_search_ranks_an_exact_title_match_first_and_highlights(seeded):
    with seeded.engine.begin() as c:  # oldest row, so only its rank can put it first
        c.execute(
            text(
                SEED_SQL.replace("md5('wf' || i)::uuid", "md5('exact')::uuid")
                .replace(
                    "(ARRAY['Sleep and memory', 'Graph neural networks', 'Microplastics in rivers', "
                    "'Remote work and output',\n              'Gut flora and mood'])[1 + i % 5] "
                    "|| ' study ' || i",
                    "'microplastics in rivers'",
                )
                .replace(
                    "timestamptz '2026-01-01 00:00:00+00' + (i % 330)",
                    "timestamptz '2020-01-01 00:00:00+00' + (i % 330)",
                )
                .replace("generate_series(1, :n)", "generate_series(1, 1)")
            )
        )
    page = seeded.execute_query(Q.search_workflows("Microplastics in rivers"), cache=False)
    assert page.total == N_WORKFLOWS // 5 + 1
    assert page.items[0]["title"] == "microplastics in rivers"
    assert "\ue000" in page.items[0]["snippet"] and "\ue000" in page.items[1]["snippet"]


def test_a_hit_found_by_its_tags_says_which_tags_matched(seeded):
    page = seeded.execute_query(Q.search_workflows("health", page_size=50), cache=False)
    assert page.total == len(range(3, N_WORKFLOWS + 1, 3))  # the rows tagged ai and health
    for hit in page.items:
        assert hit["tag_snippet"] == "ai, \ue000health\ue001"
        assert "\ue000" not in hit["snippet"]  # neither title nor question says it
    sleep = seeded.execute_query(Q.search_workflows("sleep"), cache=False).items
    assert all(h["tag_snippet"] is None for h in sleep)  # no tag matched: nothing to show


@pytest.mark.parametrize("text", ["the", "of the and", '"the"', "-the"])
def test_a_search_of_only_stop_words_is_refused_saying_why(seeded, text):
    with pytest.raises(ValidationError) as refused:
        seeded.execute_query(Q.search_workflows(text), cache=False)
    assert "ignores common words" in refused.value.user_message
    assert "more specific" in refused.value.user_message


def test_search_filters_combine_with_text(seeded):
    page = seeded.execute_query(Q.search_workflows("sleep", owner="alice", status=["draft"]), cache=False)
    assert page.total > 0
    assert all(r["owner"] == "alice" and r["status"] == "draft" for r in page.items)


def test_hostile_text_never_raises_anything_but_a_validation_error(seeded, hostile_inputs):
    corpus = hostile_inputs + ["x" * 10_000, "x" * 10_001, "🧪" * 3000]
    outcomes = {"ok": 0, "invalid": 0}
    for s in corpus:
        attempts = [
            lambda s=s: seeded.execute_query(Q.search_workflows(s), cache=False),
            lambda s=s: seeded.execute_query(Q.get_workflow_list(owner=s), cache=False),
            lambda s=s: seeded.execute_query(Q.get_workflow_list(tags=[s]), cache=False),
            lambda s=s: seeded.execute_query(Q.get_event_log(stream_id=s), cache=False),
            lambda s=s: seeded.execute_query(Q.get_workflow_list(sort=s), cache=False),
            lambda s=s: seeded.execute_query(Q.get_workflow(s), cache=False),
        ]
        for attempt in attempts:
            try:
                attempt()
                outcomes["ok"] += 1
            except ValidationError as exc:
                assert exc.user_message
                outcomes["invalid"] += 1
            except NotFoundError:
                outcomes["ok"] += 1
    assert outcomes["ok"] > len(corpus) and outcomes["invalid"] > len(corpus)
    with seeded.engine.connect() as conn:  # nothing was executed: the table is intact
        assert conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one() == N_WORKFLOWS


def test_bad_parameters_get_clear_errors():
    with pytest.raises(ValidationError, match="page size"):
        Q.get_workflow_list(page_size=201)
    with pytest.raises(ValidationError, match="unknown status"):
        Q.get_workflow_list(status=["exploded"])
    with pytest.raises(ValidationError, match="type something"):
        Q.search_workflows("   ")
    with pytest.raises(ValidationError, match="created from"):
        Q.get_workflow_list(created_from=date(2026, 2, 1), created_to=date(2026, 1, 1))


def test_cache_hits_and_ttl_expiry(db_url):
    svc = build_service(db_url, cache_ttl_seconds=0.3)
    try:
        q = Q.get_workflow_list()
        svc.execute_query(q)
        svc.execute_query(q)
        stats = svc.query_bus.cache.snapshot()
        assert (stats.hits, stats.misses) == (1, 1)
        time.sleep(0.4)  # past the 0.3 s TTL
        svc.execute_query(q)
        assert svc.query_bus.cache.snapshot().misses == 2
        svc.execute_query(q, cache=False)
        assert svc.query_bus.cache.snapshot().misses == 2  # a bypass neither hits nor misses
    finally:
        svc.close()


def test_concurrent_identical_misses_compute_once(service):
    q, barrier, errors = Q.get_overview(), threading.Barrier(8), []

    def ask():
        barrier.wait()
        try:
            service.execute_query(q)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    stats = service.query_bus.cache.snapshot()
    assert errors == [] and stats.misses == 1 and stats.hits == 7


def test_read_your_writes_right_after_a_command_never_serves_an_older_cache_entry(service):
    f = CommandFactory("alice")
    service.projections.catch_up()
    before = service.execute_query(Q.get_workflow_list())  # cached, without the new workflow
    result = service.execute_command(
        f.create_research_workflow(title="Fresh", research_question="Is it there?", methodology="exploratory")
    )
    runner = threading.Timer(0.2, service.projections.catch_up)
    runner.start()
    after = service.execute_query(Q.get_workflow_list(), min_position=result.position)
    runner.join()
    assert before.total == 0 and after.total == 1 and after.items[0]["title"] == "Fresh"
    detail = service.execute_query(Q.get_workflow(result.aggregate_id), min_position=result.position)
    assert detail.workflow["title"] == "Fresh"


def test_stale_read_times_out_with_how_far_behind(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_query_timeout(0.3)
        .build()
    )
    try:
        result = svc.execute_command(
            CommandFactory("alice").create_research_workflow(
                title="T", research_question="Q", methodology="exploratory"
            )
        )
        with pytest.raises(StaleReadError, match="has not caught up"):
            svc.execute_query(Q.get_workflow_list(), min_position=result.position)
    finally:
        svc.close()


def test_query_timeout_cancels_the_statement_in_the_database(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_query_timeout(0.3)
        .build()
    )
    locker = create_engine(db_url, poolclass=NullPool)
    try:
        with locker.connect() as conn:
            tx = conn.begin()
            conn.execute(text("LOCK TABLE workflow_summary IN ACCESS EXCLUSIVE MODE"))
            t0 = time.monotonic()
            with pytest.raises(TimeoutError_):
                svc.execute_query(Q.get_workflow_list(), cache=False)
            assert time.monotonic() - t0 < 3
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
            assert waiting == 0, "the timed-out statement is no longer running in the database"
            tx.rollback()
    finally:
        locker.dispose()
        svc.close()


def test_event_log_keyset_pages_and_correlation_trace(service):
    corr = uuid.uuid4()
    f = CommandFactory("alice", correlation_id=corr)
    for i in range(7):
        service.execute_command(
            f.create_research_workflow(title=f"W{i}", research_question="Q", methodology="exploratory")
        )
    first = service.execute_query(Q.get_event_log(limit=3), cache=False)
    second = service.execute_query(Q.get_event_log(limit=3, before=first.next_before), cache=False)
    assert [e["position"] for e in first.events] == [7, 6, 5]
    assert [e["position"] for e in second.events] == [4, 3, 2]
    service.projections.catch_up()
    trace = service.execute_query(Q.get_correlation_trace(corr), cache=False)
    assert len(trace.commands) == 7 and len(trace.events) == 7
    # task_summary handles no workflow event, alert_summary only alert events: both skipped them
    assert all(
        e["outcomes"]
        == {
            "alert_summary": "skipped",
            "task_summary": "skipped",
            "workflow_activity": "applied",
            "workflow_summary": "applied",
        }
        for e in trace.events
    )


def test_correlation_trace_says_what_each_projection_did_with_a_parked_then_discarded_event(service):
    """A poison event is parked by the two projections that need its (unknown) workflow and task,
    applied by the one that does not, and then discarded: the trace must say so, not "applied"."""
    from cqrs_core.app.demo import inject_poison_event

    healthy = service.execute_command(
        CommandFactory("alice").create_research_workflow(
            title="Healthy",
            research_question="Q",
            methodology="exploratory",
            tasks=[{"name": "t", "assignee": "bob"}],
        )
    )
    poison = inject_poison_event(service.event_store, actor="ops", role="operator")
    trace = service.execute_query(Q.get_correlation_trace(healthy.correlation_id), cache=False)
    assert [set(e["outcomes"].values()) for e in trace.events] == [{"not yet"}, {"not yet"}]

    service.projections.catch_up(timeout=20)
    trace = service.execute_query(Q.get_correlation_trace(healthy.correlation_id), cache=False)
    assert [e["outcomes"] for e in trace.events] == [
        {
            "alert_summary": "skipped",
            "task_summary": "skipped",
            "workflow_activity": "applied",
            "workflow_summary": "applied",
        },  # WorkflowCreated
        {
            "alert_summary": "skipped",
            "task_summary": "applied",
            "workflow_activity": "applied",
            "workflow_summary": "applied",
        },  # TaskAdded
    ]
    trace = service.execute_query(Q.get_correlation_trace(poison.correlation_id), cache=False)
    [event] = trace.events
    # workflow_summary ("fault") stopped in front of it; task_summary ("skip") went past it
    assert event["outcomes"] == {
        "alert_summary": "skipped",
        "task_summary": "parked",
        "workflow_activity": "applied",
        "workflow_summary": "parked",
    }

    parked = service.projections.parked()
    assert {p.projection for p in parked} == {"task_summary", "workflow_summary"}
    assert service.projections.discard_parked([p.id for p in parked]) == 2
    service.projections.catch_up(timeout=20)
    [event] = service.execute_query(Q.get_correlation_trace(poison.correlation_id), cache=False).events
    assert event["outcomes"] == {
        "alert_summary": "skipped",
        "task_summary": "discarded",
        "workflow_activity": "applied",
        "workflow_summary": "discarded",
    }


def test_a_parked_event_that_a_retry_applied_counts_as_applied(service):
    from cqrs_core.read.handlers.event_log import outcome

    cp = LogCursor(10, 100)
    assert outcome(LogCursor(10, 90), cp, "retried", handles=True) == "applied"
    assert outcome(LogCursor(10, 90), cp, None, handles=False) == "skipped"
    assert outcome(LogCursor(11, 101), cp, "parked", handles=True) == "parked"  # a fault stop
    assert outcome(LogCursor(11, 101), cp, None, handles=False) == "not yet"
    assert outcome(LogCursor(11, 101), None, None, handles=True) == "not yet"


def test_metrics_show_query_counts_and_cache(service):
    service.execute_query(Q.get_overview())
    service.execute_query(Q.get_overview())
    m = service.execute_query(Q.get_metrics())
    assert {s.name for s in m.queries} >= {"GetOverview"}
    assert m.cache.hits == 1 and m.cache.hit_rate == 0.5


def test_refreshing_statistics_drops_the_cached_statistics_answer(service):
    stale = service.execute_query(Q.get_statistics())
    service.execute_command(
        CommandFactory("alice").create_research_workflow(
            title="T", research_question="Q", methodology="exploratory"
        )
    )
    service.projections.catch_up()
    service.execute_command(CommandFactory("op", role="operator").refresh_statistics())
    fresh = service.execute_query(Q.get_statistics())
    assert sum(r["total"] for r in stale.methodology_outcomes) == 0
    assert sum(r["total"] for r in fresh.methodology_outcomes) == 1


WORDS = [
    "sleep",
    "memory",
    "graph",
    "neural",
    "networks",
    "microplastics",
    "rivers",
    "remote",
    "work",
    "output",
    "gut",
    "flora",
    "mood",
    "study",
    "effect",
    "outcome",
    "diet",
    "plastics",
    "graphs",
    "pricing",
]


def test_a_search_for_more_words_than_the_bound_is_refused_in_one_sentence(seeded):
    assert MAX_SEARCH_TERMS < len(WORDS)
    at_most = " or ".join(WORDS[:MAX_SEARCH_TERMS])
    assert seeded.execute_query(Q.search_workflows(at_most), cache=False).total == N_WORKFLOWS
    for too_many in (
        " or ".join(WORDS[: MAX_SEARCH_TERMS + 1]),
        " ".join(["sleep"] * 60),
        '"' + " ".join(WORDS) + '"',
        " ".join(f"-{w}" for w in WORDS),
    ):
        with pytest.raises(ValidationError) as refused:
            seeded.execute_query(Q.search_workflows(too_many), cache=False)
        assert refused.value.user_message == f"Search for at most {MAX_SEARCH_TERMS} words."


def test_stop_words_do_not_count_as_search_words(seeded):
    padded = " or the of and a in on ".join(WORDS[:MAX_SEARCH_TERMS])  # stop words between 16 real words
    assert len(padded.split()) > 2 * MAX_SEARCH_TERMS
    assert seeded.execute_query(Q.search_workflows(padded), cache=False).total > 0
    with pytest.raises(ValidationError, match="ignores common words"):  # nothing left to search for
        seeded.execute_query(Q.search_workflows("the"), cache=False)


def test_a_search_longer_than_the_bound_is_refused_before_it_runs():
    Q.search_workflows("x" * MAX_SEARCH_LENGTH)
    with pytest.raises(ValidationError, match=f"at most {MAX_SEARCH_LENGTH} characters"):
        Q.search_workflows("sleep or " * 1250)  # 10,000 characters: the API used to take it


def test_queries_are_rate_limited_per_actor_and_cache_hits_cost_nothing(db_url):
    svc = build_service(db_url, query_rate_limit_per_second=0.001, query_rate_limit_burst=3)
    try:
        for _ in range(3):
            svc.execute_query(Q.get_workflow_list(), cache=False, actor="alice")
        with pytest.raises(RateLimitedError) as refused:
            svc.execute_query(Q.get_workflow_list(), cache=False, actor="alice")
        assert refused.value.user_message.startswith("Too many requests for data; try again in ")
        assert refused.value.user_message.count(".") == 2  # one sentence: "... in 1000.0 s."
        svc.execute_query(Q.get_workflow_list(), cache=False, actor="bob")  # a bucket per actor
        svc.execute_query(Q.get_overview(), actor="bob")  # computed: bob pays, the answer is cached
        assert svc.execute_query(Q.get_overview(), actor="alice") is not None  # a cache hit is free
        for _ in range(10):  # no actor: this process's own code (CLI, bench), not limited
            svc.execute_query(Q.get_workflow_list(), cache=False)
        assert svc.metrics().query_errors.get("rate_limited") == 1
    finally:
        svc.close()


def test_the_default_query_rate_limit_leaves_room_for_live_pages():
    settings = load_settings()
    # A live page refreshes every ~2 s with a handful of queries; ten such tabs per person fit.
    assert settings.query_rate_limit_per_second >= 10 * 5 / 2
    assert settings.query_rate_limit_burst >= 100


def test_a_workflows_tasks_are_listed_in_the_order_they_were_added(service):
    """Tasks added together (one command, one time, as the demo seed writes them) keep their
    order, not the alphabet's, so a task never appears above the task it depends on; a task
    removed and added again takes its new place."""
    h = History(service.event_store)
    h.create()
    tasks = [
        ("Search PubMed", ()),
        ("Screen abstracts", ("Search PubMed",)),
        ("Analyse", ("Screen abstracts",)),
    ]
    added = []
    for name, deps in tasks:
        task_id = str(uuid.uuid4())
        h.tasks[name] = task_id
        added.append(ev.TaskAdded(task_id, name, "analysis", "bob", None, [h.tasks[d] for d in deps]))
    h.emit(*added)
    h.add_task("Appendix")
    h.remove_task("Appendix")
    h.add_task("Bibliography", minutes=0)
    h.add_task("Appendix", minutes=0)
    service.projections.catch_up()
    detail = service.execute_query(Q.get_workflow(uuid.UUID(h.workflow_id)))
    assert [t["name"] for t in detail.tasks] == [
        "Search PubMed",
        "Screen abstracts",
        "Analyse",
        "Bibliography",
        "Appendix",
    ]


def test_events_today_and_recent_activity_use_one_clock_and_the_asked_time_zone(service):
    """ "Today" counts events by when they happened (the clock Recent activity shows and orders
    by), from midnight in the asked zone; a back-dated event recorded now is not today's."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(UTC)
    old = History(service.event_store, start=now - timedelta(days=40))
    old.create(title="Back-dated study")
    recent = History(service.event_store, start=now - timedelta(hours=31))
    recent.create(title="Recent study")
    happened = [recent.clock]
    for _ in range(10):
        recent.update(title=f"Recent study {len(happened)}", minutes=180)
        happened.append(recent.clock)
    assert happened[-1] <= now
    service.projections.catch_up()

    for zone in ("UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Paris"):
        midnight = datetime.now(ZoneInfo(zone)).replace(hour=0, minute=0, second=0, microsecond=0)
        overview = service.execute_query(Q.get_overview(recent=3, time_zone=zone), cache=False)
        assert overview.events_today == sum(1 for t in happened if t >= midnight), zone
    # newest first by when it happened: the back-dated event, appended last, is not on top
    overview = service.execute_query(Q.get_overview(recent=3))
    assert [a["occurred_at"] for a in overview.recent_activity] == happened[::-1][:3]


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", ""])
def test_an_unknown_time_zone_is_refused_in_one_sentence(zone):
    with pytest.raises(ValidationError, match="time zone"):
        Q.get_overview(time_zone=zone)


def test_active_tasks_leave_out_running_tasks_of_workflows_ended_in_an_old_log(service):
    """A workflow that ended before its tasks were closed with it (an old log, read models not
    rebuilt): the Overview does not count its running task as active."""
    with service.engine.begin() as c:
        c.execute(
            text(
                """INSERT INTO workflow_summary (workflow_id, title, research_question, methodology, status,
                       priority, priority_rank, owner, tags, created_at, task_total, task_running, progress_pct,
                       last_activity_at, version)
                   VALUES (gen_random_uuid(), 'Old', 'q', 'exploratory', 'completed', 'normal', 1, 'alice', '{}',
                           now(), 3, 2, 0, now(), 5),
                          (gen_random_uuid(), 'Now', 'q', 'exploratory', 'running', 'normal', 1, 'alice', '{}',
                           now(), 1, 1, 0, now(), 3)"""
            )
        )
    assert service.execute_query(Q.get_overview(recent=0)).active_tasks == 1
