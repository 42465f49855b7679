"""Per-actor rate limits that hold per deployment, not per process (issue 19, part 5): the buckets
live in PostgreSQL (`rate_limit_buckets`), processes take leases of tokens from them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from fault_tools import cli_env
from roles import login_as
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.infra.errors import InfrastructureError, RateLimitedError
from cqrs_core.infra.rate_limit import OTHER_ACTORS, SharedRateLimiter, lease_size

RATE, BURST, WINDOW = 20.0, 20, 3.0

# One client process: builds its service, says "ready", waits for "go" on stdin (so both really
# overlap), then sends as one actor for WINDOW seconds as fast as refusals allow and prints what
# was accepted as one JSON line.
CLIENT = r"""
import json, sys, time, uuid
from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import RateLimitedError

url, kind, rate, burst, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
settings = load_settings(query_rate_limit_per_second=rate, query_rate_limit_burst=burst)
service = (CQRSServiceBuilder(settings).with_database_url(url).with_migrations(False).with_pool_size(2)
           .with_rate_limit(rate, burst).build())
factory = CommandFactory(actor="alice", role="researcher")
query = QueryFactory().get_workflow_list(page=1, page_size=5)

def send():
    if kind == "commands":
        service.execute_command(factory.create_research_workflow(
            title="Limited", research_question="Q?", methodology="exploratory", workflow_id=uuid.uuid4()))
    else:
        service.execute_query(query, cache=False, actor="alice")

print("ready", flush=True)
sys.stdin.readline()
accepted = refused = 0
deadline = time.monotonic() + window
while time.monotonic() < deadline:
    try:
        send()
        accepted += 1
    except RateLimitedError as exc:
        refused += 1
        time.sleep(min(exc.retry_after, 0.005))  # as fast as the limit lets through, without spinning
service.close()
print(json.dumps({"accepted": accepted, "refused": refused}), flush=True)
"""


@pytest.mark.parametrize("kind", ["commands", "queries"])
def test_one_actor_through_two_processes_gets_one_limit_not_two(db_url, kind):
    env = cli_env(db_url)
    args = [sys.executable, "-c", CLIENT, db_url, kind, str(RATE), str(BURST), str(WINDOW)]
    procs = [
        subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=60)[0].strip().splitlines()[-1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    accepted = [r["accepted"] for r in results]
    one_limit = BURST + RATE * WINDOW  # 80: what one actor may do in the window
    # At most one limit, plus one unspent lease per process and the starts' skew (0.3 s of rate);
    # a limit per process would have let through about twice as many.
    assert sum(accepted) <= one_limit + 2 * lease_size(RATE, BURST) + RATE * 0.3, results
    assert sum(accepted) >= 0.8 * one_limit, results  # the limit was reached, not starved
    assert all(n > 0 for n in accepted), results  # both processes were sending
    assert all(r["refused"] > 0 for r in results), results


def test_commands_pay_a_round_trip_per_lease_and_refusals_pay_none(db_url):
    engine = make_engine(db_url, autocommit=True, pre_ping=False)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        limiter = SharedRateLimiter(engine, "commands", rate=100.0, burst=100)
        assert limiter.lease == 10  # a tenth of a second of the rate
        assert [limiter.try_acquire("alice") for _ in range(100)] == [0.0] * 100
        assert len(statements) == 10  # one lease of 10 tokens per round trip
        slow = SharedRateLimiter(engine, "commands", rate=0.001, burst=1)
        assert slow.try_acquire("bob") == 0.0
        waits = [slow.try_acquire("bob") for _ in range(1000)]
        assert all(w > 100 for w in waits)  # refused: a token takes 1,000 s to come back
        # Its lease said the bucket was left empty: no refusal had to ask the database.
        assert len(statements) == 11
        assert slow.refusals["bob"] == 1000
    finally:
        engine.dispose()


def test_a_second_process_sees_what_the_first_has_taken(db_url):
    first, second = (make_engine(db_url, autocommit=True) for _ in range(2))
    try:
        one = SharedRateLimiter(first, "commands", rate=0.001, burst=3)
        other = SharedRateLimiter(second, "commands", rate=0.001, burst=3)
        assert [one.try_acquire("alice") for _ in range(3)] == [0.0] * 3
        assert other.try_acquire("alice") > 0  # a limiter of its own, the same bucket
        assert other.try_acquire("bob") == 0.0
        # The limits are apart: queries have a bucket of their own.
        assert SharedRateLimiter(second, "queries", rate=0.001, burst=3).try_acquire("alice") == 0.0
    finally:
        first.dispose()
        second.dispose()


def test_the_bucket_refills_at_the_rate(db_url):
    engine = make_engine(db_url, autocommit=True)
    try:
        limiter = SharedRateLimiter(engine, "commands", rate=20.0, burst=2)
        assert limiter.try_acquire("alice", 2) == 0.0
        wait = limiter.try_acquire("alice")
        assert 0 < wait <= 0.05 + 1e-9
        time.sleep(wait + 0.02)  # the passing time is the behaviour under test
        assert limiter.try_acquire("alice") == 0.0
    finally:
        engine.dispose()


def test_many_actors_keep_the_process_memory_bounded_and_a_spent_actor_stays_limited(db_url):
    engine = make_engine(db_url, autocommit=True, pool_size=2)
    try:
        limiter = SharedRateLimiter(engine, "commands", rate=0.001, burst=5, max_actors=100)
        for _ in range(5):
            assert limiter.try_acquire("alice") == 0.0
        assert limiter.try_acquire("alice") > 0
        for i in range(1000):
            assert limiter.try_acquire(f"actor-{i}") == 0.0
            if i % 100 == 0:
                # Forgotten by this process long ago: the database still holds her empty bucket.
                assert limiter.try_acquire("alice") > 0, f"alice got a fresh bucket after {i} other actors"
            assert len(limiter._leases) <= 100
        assert len(limiter.refusals) <= 101
    finally:
        engine.dispose()


def test_refusal_counts_name_at_most_max_actors_and_count_the_rest_together(db_url):
    engine = make_engine(db_url, autocommit=True, pool_size=2)
    try:
        limiter = SharedRateLimiter(engine, "commands", rate=0.001, burst=1, max_actors=10)
        for i in range(30):
            limiter.try_acquire(f"actor-{i}")
            limiter.try_acquire(f"actor-{i}")  # refused
        assert len(limiter.refusals) <= 11
        assert sum(limiter.refusals.values()) == 30
        assert limiter.refusals[OTHER_ACTORS] >= 20
    finally:
        engine.dispose()


class ShiftedClock:
    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


def test_buckets_that_filled_up_again_are_deleted_now_and_then(db_url):
    engine = make_engine(db_url, autocommit=True, pool_size=2)
    clock = ShiftedClock()
    try:
        limiter = SharedRateLimiter(engine, "commands", rate=1000.0, burst=10, clock=clock)
        for i in range(50):
            assert limiter.try_acquire(f"actor-{i}", 10) == 0.0
        # A slow refiller's empty bucket must outlive the sweep: it still limits its actor.
        slow = SharedRateLimiter(engine, "queries", rate=0.001, burst=1, clock=clock)
        assert slow.try_acquire("carol") == 0.0
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM rate_limit_buckets")).scalar_one() == 51
        time.sleep(0.05)  # 10 tokens at 1,000 a second: every commands bucket is full again
        clock.shift = 301.0  # the next lease of the limiter sweeps its own limit's full buckets
        assert limiter.try_acquire("dave") == 0.0
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT limit_name, actor FROM rate_limit_buckets ORDER BY 1")).all()
        assert [tuple(r) for r in rows] == [("commands", "dave"), ("queries", "carol")]
        assert SharedRateLimiter(engine, "queries", rate=0.001, burst=1).try_acquire("carol") > 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("role", ["cqrs_app", "cqrs_writer"])
def test_the_roles_that_run_commands_keep_the_command_limit(db_url, role):
    with login_as(db_url, role) as (_engine, url):
        svc = (
            CQRSServiceBuilder(load_settings())
            .with_database_url(url)
            .with_migrations(False)
            .with_rate_limit(0.001, 1)
            .build()
        )
        try:
            svc.execute_command(
                CommandFactory("alice").create_research_workflow(
                    title="T", research_question="Q", methodology="exploratory"
                )
            )
            with pytest.raises(RateLimitedError):
                svc.execute_command(
                    CommandFactory("alice").create_research_workflow(
                        title="T", research_question="Q", methodology="exploratory"
                    )
                )
        finally:
            svc.close()


@pytest.mark.parametrize("role", ["cqrs_reader", "cqrs_projector"])
def test_no_other_role_may_touch_the_buckets(db_url, role):
    with login_as(db_url, role) as (engine, _url):
        for sql in (
            "SELECT count(*) FROM rate_limit_buckets",
            "INSERT INTO rate_limit_buckets (limit_name, actor, tokens, refilled_at) VALUES ('commands', 'x', 1e9, now())",
            "DELETE FROM rate_limit_buckets",
        ):
            with engine.connect() as conn, pytest.raises(Exception, match="permission denied"):
                conn.execute(text(sql))


def test_a_reader_only_client_that_charges_an_actor_is_told_which_role_to_use(db_url):
    with login_as(db_url, "cqrs_reader") as (_engine, url):
        svc = CQRSServiceBuilder(load_settings()).with_database_url(url).with_migrations(False).build()
        try:
            query = QueryFactory().get_workflow_list(page=1, page_size=5)
            assert svc.execute_query(query, cache=False).total == 0  # its own code is not limited
            with pytest.raises(InfrastructureError, match="run as cqrs_app") as info:
                svc.execute_query(query, cache=False, actor="alice")
            assert "rate_limit_buckets" in info.value.user_message
        finally:
            svc.close()
    check = create_engine(db_url, poolclass=NullPool)
    with check.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rate_limit_buckets")).scalar_one() == 0
    check.dispose()


def test_a_count_above_the_burst_never_fits_and_charges_nothing(db_url):
    engine = make_engine(db_url, autocommit=True)
    try:
        limiter = SharedRateLimiter(engine, "commands", rate=1.0, burst=3)
        assert limiter.try_acquire("alice", 4) == float("inf")
        assert limiter.try_acquire("alice", 3) == 0.0  # the whole burst was still there
        assert 0.9 < limiter.try_acquire("alice", 1) <= 1.0
    finally:
        engine.dispose()
