"""The rate limiter's memory is bounded however many actors it sees (issue 12, item 13)."""

from cqrs_core.infra.rate_limit import OTHER_ACTORS, TokenBucketLimiter


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_two_hundred_thousand_actors_keep_the_bucket_map_under_its_cap_and_an_active_actor_stays_limited():
    clock = FrozenClock()  # time stands still: no bucket refills, so none may be dropped as "full"
    limiter = TokenBucketLimiter(rate=1.0, burst=5, clock=clock, max_actors=1000)
    for _ in range(5):
        assert limiter.try_acquire("alice") == 0.0
    assert limiter.try_acquire("alice") > 0  # alice has spent her burst
    for i in range(200_000):
        assert limiter.try_acquire(f"actor-{i}") == 0.0
        if i % 100 == 0:
            assert limiter.try_acquire("alice") > 0, f"alice got a fresh bucket after {i} other actors"
        assert len(limiter._buckets) <= 1000
    assert len(limiter.refusals) <= 1000


def test_buckets_that_refilled_are_forgotten_without_changing_any_answer():
    clock = FrozenClock()
    limiter = TokenBucketLimiter(rate=10.0, burst=2, clock=clock, max_actors=1_000_000)
    for i in range(50_000):
        clock.now += 0.001  # one new actor a millisecond; a bucket refills in 0.2 s
        assert limiter.try_acquire(f"actor-{i}") == 0.0
    # Only the buckets of the last refill time (0.2 s: about 200 actors) are still kept.
    assert len(limiter._buckets) <= 300
    assert limiter.try_acquire("actor-49999") == 0.0
    assert limiter.try_acquire("actor-49999") > 0  # its bucket was kept: 2 tokens, 1 + 1 taken


def test_refusal_counts_name_at_most_max_actors_and_count_the_rest_together():
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=FrozenClock(), max_actors=10)
    for i in range(30):
        limiter.try_acquire(f"actor-{i}")
        limiter.try_acquire(f"actor-{i}")  # refused
    assert len(limiter.refusals) <= 11
    assert sum(limiter.refusals.values()) == 30
    assert limiter.refusals[OTHER_ACTORS] >= 20
