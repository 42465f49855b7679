"""Least-privilege roles (migrations 0003, 0005): a reader cannot write, a writer can only append,
and no role — not even the owner — can rewrite history through the append-only triggers.

The roles are NOLOGIN groups; these tests log in as login roles of their own that are granted
one group each, as an admin would set it up."""

import uuid

import pytest
from roles import login_as
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.infra.config import load_settings


@pytest.fixture
def seeded(db_url):
    svc = CQRSServiceBuilder(load_settings()).with_database_url(db_url).with_migrations(False).build()
    svc.execute_command(
        CommandFactory("alice").create_research_workflow(
            title="T", research_question="Q", methodology="exploratory"
        )
    )
    svc.projections.catch_up()
    svc.close()
    return db_url


def refused(engine, sql, params=None):
    with engine.connect() as conn:
        with pytest.raises(DBAPIError) as info:
            conn.execute(text(sql), params or {})
        conn.rollback()
    assert "permission denied" in str(info.value.orig) or "append-only" in str(info.value.orig)


def test_the_group_roles_cannot_log_in(db_url):
    engine = create_engine(db_url, poolclass=NullPool)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                text(
                    "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN "
                    "('cqrs_writer', 'cqrs_projector', 'cqrs_reader', 'cqrs_app')"
                )
            ).all()
        )
    engine.dispose()
    assert rows == {"cqrs_writer": False, "cqrs_projector": False, "cqrs_reader": False, "cqrs_app": False}


def test_reader_can_read_read_models_but_cannot_write_anything(seeded):
    with login_as(seeded, "cqrs_reader") as (reader, _url):
        with reader.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one() == 1
            assert conn.execute(text("SELECT count(*) FROM stats_methodology_outcomes")).scalar_one() >= 0
        refused(reader, "UPDATE workflow_summary SET title = 'x'")
        refused(reader, "DELETE FROM task_summary")
        refused(
            reader,
            "INSERT INTO command_log (command_id, command_type, actor, result) "
            "VALUES (gen_random_uuid(), 'x', 'x', '{}')",
        )
        refused(
            reader,
            "INSERT INTO events (stream_id, version, event_type, payload, event_id, actor) "
            "VALUES ('s', 1, 'WorkflowStarted', '{}', gen_random_uuid(), 'x')",
        )
        refused(reader, "UPDATE projection_checkpoints SET last_position = 0")


def test_writer_appends_through_the_service_but_cannot_touch_read_models(seeded):
    with login_as(seeded, "cqrs_writer") as (writer, url):
        svc = CQRSServiceBuilder(load_settings()).with_database_url(url).with_migrations(False).build()
        try:
            result = svc.execute_command(
                CommandFactory("bob").create_research_workflow(
                    title="By writer", research_question="Q", methodology="exploratory"
                )
            )
            assert result.position > 0
        finally:
            svc.close()
        refused(writer, "UPDATE workflow_summary SET title = 'x'")
        refused(writer, "DELETE FROM workflow_summary")


@pytest.mark.parametrize("role", ["cqrs_writer", "cqrs_projector", "cqrs_reader", "cqrs_app", None])
def test_no_role_can_rewrite_history(seeded, role):
    def attempt(engine):
        refused(engine, "UPDATE events SET actor = 'mallory'")
        refused(engine, "DELETE FROM events")
        with engine.connect() as conn:
            with pytest.raises(DBAPIError):
                with conn.begin():
                    # 0001's trigger let a TRUNCATE through when the session set this; any session could.
                    conn.execute(text("SET LOCAL cqrs.allow_reset = 'on'"))
                    conn.execute(text("TRUNCATE events CASCADE"))

    if role:
        with login_as(seeded, role) as (engine, _url):
            attempt(engine)
    else:  # the owner (here the superuser) too, as long as it leaves the triggers on
        engine = create_engine(seeded, poolclass=NullPool)
        attempt(engine)
        engine.dispose()
    check = create_engine(seeded, poolclass=NullPool)
    with check.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events WHERE actor = 'mallory'")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() >= 1
    check.dispose()


def test_projector_runs_projections_and_refreshes_views_through_the_definer_function(seeded):
    svc = CQRSServiceBuilder(load_settings()).with_database_url(seeded).with_migrations(False).build()
    svc.execute_command(
        CommandFactory("carol").create_research_workflow(
            title="Later", research_question="Q", methodology="exploratory", workflow_id=uuid.uuid4()
        )
    )
    svc.close()
    with login_as(seeded, "cqrs_projector") as (projector, _url):
        from cqrs_core.projections import ProjectionManager

        manager = ProjectionManager(projector, load_settings())
        try:
            assert manager.catch_up(timeout=30) > 0
        finally:
            manager.close()
        with projector.begin() as conn:
            conn.execute(text("SELECT cqrs_refresh_view('stats_methodology_outcomes')"))
            assert conn.execute(text("SELECT sum(total) FROM stats_methodology_outcomes")).scalar_one() == 2
        with projector.connect() as conn, pytest.raises(DBAPIError, match="not a statistics view"):
            conn.execute(text("SELECT cqrs_refresh_view('pg_authid')"))
        refused(
            projector,
            "INSERT INTO events (stream_id, version, event_type, payload, event_id, actor) "
            "VALUES ('s', 1, 'WorkflowStarted', '{}', gen_random_uuid(), 'x')",
        )


def test_a_worker_with_only_the_projector_role_runs_projections_and_refuses_a_rebuild_clearly(seeded):
    """Rebuild shadows may only be created by cqrs_app (migration 0005): a projector-only worker
    catches up as before, and a requested rebuild fails once, with a message naming the role it needs."""
    svc = CQRSServiceBuilder(load_settings()).with_database_url(seeded).with_migrations(False).build()
    svc.execute_command(
        CommandFactory("carol").create_research_workflow(
            title="Later", research_question="Q", methodology="exploratory"
        )
    )
    svc.close()
    with login_as(seeded, "cqrs_projector") as (projector, _url):
        from cqrs_core.projections import ProjectionManager
        from cqrs_core.projections.engine.rebuild import RebuildFailed

        manager = ProjectionManager(projector, load_settings())
        try:
            assert manager.catch_up(timeout=30) > 0
            manager.request_rebuild("workflow_activity")
            with pytest.raises(RebuildFailed) as refused:
                manager.rebuild("workflow_activity")
            status = {s.name: s for s in manager.status()}["workflow_activity"]
        finally:
            manager.close()
        with projector.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one() == 2
    assert refused.value.user_message == (
        "Rebuilding workflow_activity needs the cqrs_app role (it creates tables in cqrs_shadow); "
        "run the rebuild as a database login that is a member of cqrs_app."
    )
    assert not status.rebuild_requested  # the worker does not try it again and again
    assert "cqrs_app" in status.rebuild_error
