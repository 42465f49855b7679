"""The lag sampler is never skipped (issue 14: the lag chart had holes exactly when people
watched): a sample held up past its interval delays the next one instead of dropping it, and no
other job can hold a sample up."""

from __future__ import annotations

import time

from sqlalchemy import text
from waiting import wait_until

from cqrs_core.infra.config import load_settings
from cqrs_core.projections.engine.runtime import SAMPLER_EXECUTOR, ProjectionRuntime

INTERVAL = 3.0


def sampler(runtime: ProjectionRuntime):
    return next(job for job in runtime.jobs() if job.job_id == "lag-sampler")


def sample_waits_for_the_table(engine) -> bool:
    with engine.connect() as c:
        return bool(
            c.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO lag_samples%'"
                )
            ).scalar_one()
        )


def test_a_sample_held_up_past_its_interval_delays_the_next_instead_of_skipping_it(engine, db_url):
    runtime = ProjectionRuntime(engine, load_settings(database_url=db_url, lag_sample_seconds=INTERVAL))
    runtime.start()
    try:
        wait_until(lambda: sampler(runtime).runs >= 1, 20, "the first lag sample")
        with engine.connect() as blocker:
            blocker.execute(text("LOCK TABLE lag_samples IN EXCLUSIVE MODE"))  # reads pass, the insert waits
            wait_until(
                lambda: sample_waits_for_the_table(engine), 2 * INTERVAL + 10, "a sample to be held up"
            )
            runs = sampler(runtime).runs
            # Hold it past the next due time (by half an interval, well before the one after):
            # the passing time is the behaviour under test.
            time.sleep(1.5 * INTERVAL)
            blocker.rollback()
        wait_until(
            lambda: sampler(runtime).runs >= runs + 2, 20, "the held-up sample and the one due meanwhile"
        )
        assert sampler(runtime).skipped == 0
        assert sampler(runtime).last_outcome == "ok"
    finally:
        assert runtime.stop(timeout=10)


def test_the_sampler_has_a_thread_of_its_own_and_no_misfire_limit(engine, db_url):
    runtime = ProjectionRuntime(engine, load_settings(database_url=db_url))
    runtime.start()
    try:
        scheduler = runtime._scheduler
        assert scheduler is not None
        job = scheduler.get_job("lag-sampler")
        assert job.executor == SAMPLER_EXECUTOR and job.misfire_grace_time is None and job.coalesce
        others = [j for j in scheduler.get_jobs() if j.id != "lag-sampler"]
        assert others and all(j.executor != SAMPLER_EXECUTOR for j in others)
    finally:
        assert runtime.stop(timeout=10)
