"""Every page with the query side on a real hot standby (CQRS_READ_DATABASE_URL, tests/replication.py):
the pages render from the read-only standby, and a standby that is down shows one sentence, or
the primary's data, as CQRS_READ_REPLICA_FALLBACK says."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

from __future__ import annotations

import pytest
from page_harness import app_env, create_workflow, run_page, seed, texts  # noqa: F401
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from waiting import wait_until

PAGES = [
    "pages/overview.py",
    "pages/new_workflow.py",
    "pages/workflows.py",
    "pages/workflow.py",
    "pages/statistics.py",
    "pages/projections.py",
    "pages/event_explorer.py",
    "pages/system.py",
    "pages/audit.py",
    "pages/demo.py",
]
FAULT = "Something went wrong on this page"
REFUSAL = "The read replica cannot be reached, so nothing could be read; try again in a moment."


@pytest.fixture
def seeded(replicated_cluster, replica_db):
    """A workflow with tasks on the primary, its read models replayed on the standby; its id."""
    workflow_id = seed(
        replica_db.primary_url,
        lambda svc: create_workflow(
            svc,
            title="Coastal erosion survey",
            tasks=[{"name": "Collect samples"}, {"name": "Map the dunes"}],
        ),
    )
    replicated_cluster.wait_replayed()
    return workflow_id


def use_standby(app_env, replica_db, fallback: str) -> None:
    app_env(replica_db.primary_url, read_database_url=replica_db.standby_url, read_replica_fallback=fallback)


def standby_commits(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
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


def test_every_page_renders_with_its_queries_on_the_read_only_standby(replica_db, seeded, app_env):
    # Refused rather than answered by the primary: what the pages show came from the standby.
    use_standby(app_env, replica_db, "error")
    before = standby_commits(replica_db.standby_url)

    for page in PAGES:
        at = run_page(page, query_params={"workflow": seeded} if page == "pages/workflow.py" else None)
        shown = texts(at)
        assert not at.error, (page, [e.value for e in at.error])
        assert FAULT not in shown, page

    at = run_page("pages/workflow.py", query_params={"workflow": seeded})
    assert "Coastal erosion survey" in texts(at)
    service = at.session_state["runtime"].service
    assert service.replica.reading_from == "replica"
    assert service.query_metrics.errors_by_category() == {}
    wait_until(
        lambda: standby_commits(replica_db.standby_url) > before,
        15,
        "the standby's statistics to count the pages' queries",
        interval=0.2,
    )


def test_a_stopped_standby_shows_one_sentence_on_the_pages_when_fallback_is_error(
    replicated_cluster, replica_db, seeded, app_env
):
    use_standby(app_env, replica_db, "error")
    replicated_cluster.stop_standby()

    for page in ("pages/overview.py", "pages/workflows.py", "pages/statistics.py"):
        at = run_page(page)
        shown = texts(at)
        assert REFUSAL in [e.value.replace("\\", "") for e in at.error], page  # shown markdown-escaped
        assert FAULT not in shown and "Traceback" not in shown, page


def test_a_stopped_standby_leaves_the_pages_reading_the_primary_when_fallback_is_primary(
    replicated_cluster, replica_db, seeded, app_env
):
    use_standby(app_env, replica_db, "primary")
    replicated_cluster.stop_standby()

    at = run_page("pages/workflow.py", query_params={"workflow": seeded})

    assert "Coastal erosion survey" in texts(at)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["runtime"].service.replica.reading_from == "primary"
