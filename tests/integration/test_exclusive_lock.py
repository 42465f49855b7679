"""`locks.exclusive`, the lock of one-at-a-time jobs (continuous verification's passes, rebuilds):
the moment the block ends, another session can take it. Closing the lock's connection alone
released it only once the server had ended that backend, a moment later; back-to-back passes
then found it "held by another process" (seen under load in
test_no_false_drift_while_projections_apply_a_steady_load)."""

from __future__ import annotations

from cqrs_core.infra.db import make_engine
from cqrs_core.projections.engine.locks import JOB_NAMESPACE, dedicated_connection, exclusive, lock_key

NAME = "back-to-back"


def test_the_lock_is_free_for_another_session_as_soon_as_the_block_ends(db_url):
    engine = make_engine(db_url)
    other = dedicated_connection(engine, "watcher")  # already connected: asks at once
    try:
        refused = 0
        with other.cursor() as cur:
            for _ in range(200):
                with exclusive(engine, JOB_NAMESPACE, NAME) as mine:
                    assert mine
                cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (JOB_NAMESPACE, lock_key(NAME)))
                taken = cur.fetchone()[0]
                refused += not taken
                if taken:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (JOB_NAMESPACE, lock_key(NAME)))
        assert refused == 0, f"{refused} of 200 times the lock was still held after its block ended"
        # and while held it excludes
        with exclusive(engine, JOB_NAMESPACE, NAME) as mine, exclusive(engine, JOB_NAMESPACE, NAME) as again:
            assert (mine, again) == (True, False)
    finally:
        other.close()
        engine.dispose()
