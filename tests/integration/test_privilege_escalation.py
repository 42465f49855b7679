"""No role the app uses can become the owner (issue 12, item 1 and #21).

0003's `cqrs_refresh_view` ran as its owner (in embedded mode the superuser) with
`search_path = public`, and cqrs_projector could CREATE in public: a planted
`public.format(text, text)` ran as the owner, disabled the append-only trigger, rewrote an event
and granted the projector ALL on events. These tests run that attack and its variants, check the
catalogue for the conditions that made it possible, and check what the runtime's own connections
may do. Reset is the one way to empty the log: an admin's action, through one audited function.
A later review found the projector could plant a rebuild shadow whose trigger ran as cqrs_app when
the runtime resumed into it: the shadow schema is now the app role's alone, and a rebuild trusts
only shadows it owns that run no code (each defence is tested on its own)."""

from __future__ import annotations

import threading
import uuid

import pytest
from roles import login_as
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from waiting import wait_until

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.app.demo import DemoController, inject_poison_event
from cqrs_core.app.runtime import open_runtime
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import ensure_login_role, make_engine, stop_embedded_server
from cqrs_core.infra.errors import AuthorizationError
from cqrs_core.projections import ProjectionManager
from cqrs_core.projections.engine.rebuild import RebuildFailed
from cqrs_core.projections.engine.runtime import ProjectionRuntime
from cqrs_core.projections.engine.verify import verify

LEAST_PRIVILEGE_ROLES = ("cqrs_writer", "cqrs_projector", "cqrs_reader", "cqrs_app")

# What the attacker's function does if it ever runs as the owner: everything 0003 allowed.
PAYLOAD = """
    BEGIN
        INSERT INTO cqrs_shadow.planted_ran VALUES (current_user);
        EXECUTE 'ALTER TABLE public.events DISABLE TRIGGER USER';
        EXECUTE 'UPDATE public.events SET actor = ''mallory''';
        EXECUTE 'GRANT ALL ON public.events TO cqrs_projector';
        EXECUTE 'ALTER ROLE cqrs_projector SUPERUSER';
        RETURN 'x';
    END
"""


def owner(db_url):
    return create_engine(db_url, poolclass=NullPool)


def scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def snapshot(db_url) -> dict:
    """What the attack would change: the log, the triggers, the grants, the roles' powers."""
    engine = owner(db_url)
    try:
        return {
            "events": scalar(engine, "SELECT md5(string_agg(e::text, ',' ORDER BY position)) FROM events e"),
            "triggers": scalar(
                engine,
                "SELECT string_agg(tgname || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger "
                "WHERE tgrelid = 'public.events'::regclass AND NOT tgisinternal",
            ),
            "acl": scalar(engine, "SELECT relacl::text FROM pg_class WHERE oid = 'public.events'::regclass"),
            "powers": scalar(
                engine,
                "SELECT string_agg(rolname || rolsuper::text || rolcreaterole::text, ',' "
                "ORDER BY rolname) FROM pg_roles WHERE rolname = ANY(:roles)",
                roles=list(LEAST_PRIVILEGE_ROLES),
            ),
        }
    finally:
        engine.dispose()


@pytest.fixture
def seeded(db_url):
    svc = CQRSServiceBuilder(load_settings()).with_database_url(db_url).with_migrations(False).build()
    try:
        for i in range(2):
            svc.execute_command(
                CommandFactory("alice").create_research_workflow(
                    title=f"Study {i}", research_question="Q", methodology="exploratory"
                )
            )
        svc.projections.catch_up(timeout=30)
    finally:
        svc.close()
    return db_url


def test_the_projector_cannot_plant_a_function_in_public(seeded):
    with login_as(seeded, "cqrs_projector") as (projector, _url):
        with projector.connect() as conn, pytest.raises(DBAPIError, match="permission denied"):
            conn.exec_driver_sql(
                f"CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $$ {PAYLOAD} $$"
            )


def test_functions_planted_where_the_projector_can_create_do_not_run_in_the_definer_function(seeded):
    before = snapshot(seeded)
    with owner(seeded).begin() as conn:  # where the payload would leave its mark, were it to run as the owner
        conn.exec_driver_sql("CREATE TABLE cqrs_shadow.planted_ran (who text)")
    with login_as(seeded, "cqrs_projector") as (projector, _url):
        with projector.begin() as conn:
            writable = (
                conn.execute(
                    text(
                        "SELECT nspname FROM pg_namespace "
                        "WHERE has_schema_privilege(oid, 'CREATE') ORDER BY nspname"
                    )
                )
                .scalars()
                .all()
            )
        assert writable == []
        with projector.connect() as conn:
            for schema in (*writable, "pg_temp"):
                # Better matches than pg_catalog.format(text, VARIADIC "any") for the call in the function.
                conn.exec_driver_sql(
                    f"CREATE FUNCTION {schema}.format(text, text) RETURNS text "
                    f"LANGUAGE plpgsql AS $$ {PAYLOAD} $$"
                )
                conn.exec_driver_sql(
                    f"CREATE FUNCTION {schema}.format(text, name) RETURNS text "
                    f"LANGUAGE plpgsql AS $$ {PAYLOAD} $$"
                )
            conn.commit()
            conn.exec_driver_sql("SET search_path = cqrs_shadow, pg_temp, public")
            for nonblocking in (True, False):
                conn.execute(
                    text("SELECT public.cqrs_refresh_view('stats_task_kind', :nb)"), {"nb": nonblocking}
                )
                conn.commit()
            assert conn.execute(text("SELECT count(*) FROM stats_task_kind")).scalar_one() >= 0
        after_attack = snapshot(seeded)
    assert scalar(owner(seeded), "SELECT count(*) FROM cqrs_shadow.planted_ran") == 0
    assert after_attack == before


def test_a_table_planted_in_the_shadow_schema_does_not_run_code_when_an_admin_resets(seeded):
    """A TRUNCATE fires triggers as whoever truncates: the reset drops shadows instead. Only the app
    role may create there; a login of its own plants the table, to run as the function's owner."""
    before = snapshot(seeded)
    with login_as(seeded, "cqrs_app") as (projector, _url):
        with projector.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE cqrs_shadow.workflow_summary (x int)")
            conn.exec_driver_sql(
                "CREATE FUNCTION cqrs_shadow.on_truncate() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN EXECUTE 'ALTER TABLE public.events DISABLE TRIGGER USER'; "
                "EXECUTE 'GRANT ALL ON public.events TO cqrs_projector'; "
                "EXECUTE 'ALTER ROLE cqrs_projector SUPERUSER'; RETURN NULL; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER t BEFORE TRUNCATE ON cqrs_shadow.workflow_summary "
                "FOR EACH STATEMENT EXECUTE FUNCTION cqrs_shadow.on_truncate()"
            )
        service = (
            CQRSServiceBuilder(load_settings())
            .with_database_url(seeded)
            .with_database_role("cqrs_app")
            .with_migrations(False)
            .build()
        )
        try:
            DemoController(service).reset(role="admin", actor="ada")
        finally:
            service.close()
        assert scalar(projector, "SELECT to_regclass('cqrs_shadow.workflow_summary')") is None
    after = snapshot(seeded)
    assert after["events"] is None  # the reset emptied the log, as asked; nothing else changed
    assert {k: v for k, v in after.items() if k != "events"} == {
        k: v for k, v in before.items() if k != "events"
    }


def test_no_least_privilege_role_may_create_in_public_and_only_the_app_role_in_the_shadow_schema(db_url):
    engine = owner(db_url)
    try:
        for role in (*LEAST_PRIVILEGE_ROLES, "public"):
            assert not scalar(engine, "SELECT has_schema_privilege(:r, 'public', 'CREATE')", r=role), role
        may_create_shadows = {
            r
            for r in LEAST_PRIVILEGE_ROLES
            if scalar(engine, "SELECT has_schema_privilege(:r, 'cqrs_shadow', 'CREATE')", r=r)
        }
        assert may_create_shadows == {"cqrs_app"}
        assert not scalar(engine, "SELECT has_schema_privilege('public', 'cqrs_shadow', 'USAGE')")
        # Nobody may hang triggers or foreign keys on the owner's tables.
        for role in LEAST_PRIVILEGE_ROLES:
            assert not scalar(
                engine,
                """
                SELECT bool_or(has_table_privilege(:r, c.oid, 'TRIGGER') OR has_table_privilege(:r, c.oid, 'REFERENCES')
                               OR has_table_privilege(:r, c.oid, 'TRUNCATE'))
                FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'm')""",
                r=role,
            ), role
    finally:
        engine.dispose()


def test_every_security_definer_function_pins_a_safe_search_path_and_is_not_public(db_url):
    """Fails when a future migration adds a definer function without `SET search_path = pg_catalog, …`."""
    engine = owner(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("""
                SELECT p.oid::regprocedure::text AS name, p.proconfig,
                       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute
                FROM pg_proc p
                WHERE p.prosecdef AND p.pronamespace NOT IN ('pg_catalog'::regnamespace,
                                                               'information_schema'::regnamespace)
            """)
            ).all()
            # Trigger functions run as whoever writes the table (the owner too): pinned as well.
            triggers = conn.execute(
                text("""
                SELECT DISTINCT p.oid::regprocedure::text AS name, p.proconfig FROM pg_trigger t
                JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal""")
            ).all()
    finally:
        engine.dispose()
    names = {r.name for r in rows}
    assert {"cqrs_refresh_view(text,boolean)", "cqrs_reset_all(text)"} <= names
    for row in [*rows, *triggers]:
        paths = [c for c in row.proconfig or [] if c.startswith("search_path=")]
        assert paths and paths[0].removeprefix("search_path=").split(",")[0].strip() == "pg_catalog", row
    assert not [r.name for r in rows if r.public_may_execute]


def test_the_reset_function_is_for_the_app_role_only(seeded):
    engine = owner(seeded)
    try:
        may = {
            r: scalar(
                engine, "SELECT has_function_privilege(:r, 'public.cqrs_reset_all(text)', 'EXECUTE')", r=r
            )
            for r in (*LEAST_PRIVILEGE_ROLES, "public")
        }
    finally:
        engine.dispose()
    assert may == {
        "cqrs_writer": False,
        "cqrs_projector": False,
        "cqrs_reader": False,
        "cqrs_app": True,
        "public": False,
    }
    with login_as(seeded, "cqrs_writer") as (writer, _url):
        with writer.connect() as conn, pytest.raises(DBAPIError, match="permission denied"):
            conn.execute(text("SELECT public.cqrs_reset_all('mallory')"))
        with writer.connect() as conn, pytest.raises(DBAPIError):
            with conn.begin():
                conn.execute(text("SET LOCAL cqrs.allow_reset = 'on'"))
                conn.execute(text("TRUNCATE events"))
    assert scalar(owner(seeded), "SELECT count(*) FROM events") == 2


# ---------------------------------------------------------------- the runtime's own connections


def assert_least_privileged(engine, expected_login: str | None = None) -> None:
    """`engine`'s sessions act as cqrs_app: not superuser, owning nothing, unable to change history."""
    with engine.connect() as conn:
        who = conn.execute(text("SELECT session_user::text AS login, current_user::text AS acting")).one()
        assert who.acting == "cqrs_app"
        if expected_login:
            assert who.login == expected_login
        assert (
            conn.execute(
                text(
                    "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            ).scalar_one()
            is False
        )
        owned = conn.execute(
            text("""
            SELECT count(*) FROM pg_class c
            WHERE c.relnamespace IN ('public'::regnamespace, 'cqrs_shadow'::regnamespace)
              AND pg_has_role(current_user, c.relowner, 'USAGE')""")
        ).scalar_one()
        assert owned == 0
        conn.rollback()
    for statement in (
        "UPDATE events SET actor = 'mallory'",
        "DELETE FROM events",
        "TRUNCATE events",
        "ALTER TABLE events DISABLE TRIGGER events_no_update",
        "ALTER TABLE events DISABLE TRIGGER ALL",
        "ALTER TABLE events OWNER TO cqrs_app",
        "DROP TRIGGER events_no_truncate ON events",
        "CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$",
    ):
        with engine.connect() as conn, pytest.raises(DBAPIError) as refused:
            with conn.begin():
                conn.execute(text("SET LOCAL cqrs.allow_reset = 'on'"))
                conn.exec_driver_sql(statement)
        message = str(refused.value.orig)
        assert "permission denied" in message or "must be owner" in message or "append-only" in message, (
            statement
        )


def test_the_app_runtime_on_a_configured_url_acts_as_the_app_role(seeded):
    """CQRS_DATABASE_URL here is the superuser's; every runtime connection takes cqrs_app (SET ROLE)."""
    runtime = open_runtime(load_settings(database_url=seeded, run_projections=False))
    try:
        service = runtime.service
        for engine in (runtime.engine, service.engine, service.command_engine, service.read_engine):
            assert_least_privileged(engine)
        # and it still does all of its work with those rights
        service.execute_command(
            CommandFactory("bob").create_research_workflow(
                title="As the app", research_question="Q", methodology="exploratory"
            )
        )
        inject_poison_event(service.event_store, actor="ada", role="admin")
        assert service.projections.catch_up(timeout=30) > 0
        assert service.projections.parked()  # the poison event, parked by a projection that skips it
        assert service.projections.sample_lag()
        assert len(service.projections.refresh_views()) == 4
        for name in ("task_summary", "workflow_activity"):  # shadows in cqrs_shadow, swapped in
            assert service.projections.rebuild(name).finished
        assert verify(service.engine, ["task_summary", "workflow_activity"]).ok
    finally:
        runtime.close()


def test_the_embedded_runtime_logs_in_as_a_role_that_is_neither_owner_nor_superuser(tmp_path):
    settings = load_settings(database_url=None, data_dir=tmp_path / "data", database_name="console")
    try:
        service = CQRSServiceBuilder(settings).build()
        try:
            for engine in (service.engine, service.command_engine, service.read_engine):
                assert_least_privileged(engine, expected_login="cqrs_console")
            service.execute_command(
                CommandFactory("bob").create_research_workflow(
                    title="Embedded", research_question="Q", methodology="exploratory"
                )
            )
            assert service.projections.catch_up(timeout=30) > 0
        finally:
            service.close()
    finally:
        stop_embedded_server(settings.data_dir)


# ---------------------------------------------------------------- reset: admins only, audited


def test_an_admin_resets_through_the_definer_function_and_the_audit_row_survives_the_next_reset(seeded):
    service = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(seeded)
        .with_database_role("cqrs_app")
        .with_migrations(False)
        .build()
    )
    controller = DemoController(service)
    try:
        with pytest.raises(AuthorizationError) as refused:
            controller.reset(role="operator", actor="otto")
        assert refused.value.user_message == "Only an admin can reset the demo data; ask an admin to do it."
        assert service.event_store.count() == 2

        first = controller.reset(role="admin", actor="ada")
        assert (first.events, first.commands) == (2, 2)
        assert service.event_store.count() == 0
        service.execute_command(
            CommandFactory("bob").create_research_workflow(
                title="After", research_question="Q", methodology="exploratory"
            )
        )
        controller.reset(role="admin", actor="alan")
    finally:
        service.close()
    engine = owner(seeded)
    try:
        with engine.connect() as conn:
            audit = conn.execute(
                text("SELECT reset_by, database_user, events, commands, tables FROM reset_audit ORDER BY id")
            ).all()
            assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 0
            triggers = conn.execute(
                text(
                    "SELECT bool_and(tgenabled = 'O') FROM pg_trigger "
                    "WHERE tgrelid = 'public.events'::regclass AND NOT tgisinternal"
                )
            ).scalar()
    finally:
        engine.dispose()
    assert [(a.reset_by, a.events, a.commands) for a in audit] == [("ada", 2, 2), ("alan", 1, 1)]
    assert {"events", "command_log", "workflow_summary"} <= set(audit[0].tables)
    assert triggers is True


def test_processes_creating_the_runtime_login_at_once_all_succeed(db_url):
    """Every app and worker process on an embedded server makes sure its login role exists."""
    login = f"cqrs_test_{uuid.uuid4().hex[:12]}"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def create() -> None:
        start.wait()
        try:
            ensure_login_role(db_url, login, "cqrs_app")
        except BaseException as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine = owner(db_url)
    try:
        assert not errors
        assert scalar(
            engine,
            "SELECT rolcanlogin AND NOT rolsuper AND pg_has_role(:l, 'cqrs_app', 'MEMBER') "
            "FROM pg_roles WHERE rolname = :l",
            l=login,
        )
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP ROLE "{login}"')
            conn.commit()
        engine.dispose()


def test_an_app_configured_with_a_login_that_only_has_the_app_role_starts_once_the_owner_migrated(seeded):
    """The setup for a shared server: the owner runs `cqrs-console migrate`, the app logs in as a role
    that is a member of cqrs_app and nothing else; at start-up it finds nothing to migrate."""
    with login_as(seeded, "cqrs_app") as (_engine, url):
        runtime = open_runtime(load_settings(database_url=url, run_projections=False))
        try:
            assert runtime.applied_migrations == []
            assert_least_privileged(runtime.service.engine)
            assert runtime.health(max_age_seconds=0).healthy
            runtime.service.execute_command(
                CommandFactory("bob").create_research_workflow(
                    title="Least privilege", research_question="Q", methodology="exploratory"
                )
            )
            assert runtime.service.projections.catch_up(timeout=30) > 0
        finally:
            runtime.close()


def test_a_reset_refuses_a_name_that_is_only_white_space(seeded):
    with login_as(seeded, "cqrs_app") as (app, _url):
        for blank in ("", "   ", "\t\n", " \r\n\t ", "\x0b\x0c"):
            with app.connect() as conn, pytest.raises(DBAPIError, match="needs the name of who asked"):
                conn.execute(text("SELECT public.cqrs_reset_all(:by)"), {"by": blank})
    engine = owner(seeded)
    try:
        assert scalar(engine, "SELECT count(*) FROM events") == 2
        assert scalar(engine, "SELECT count(*) FROM reset_audit") == 0
    finally:
        engine.dispose()


# ---------------------------------------------------------------- rebuild shadows planted by the projector

# The review's attack: a table in cqrs_shadow with the live table's columns and a trigger that, run
# as whoever rebuilds (cqrs_app), forges an event and locks the admin out of signing in; the
# rebuild cursor set so that the runtime resumes into it, and a rebuild requested.
PLANT_SHADOW = """
CREATE TABLE cqrs_shadow.workflow_activity (LIKE public.workflow_activity INCLUDING DEFAULTS);
CREATE FUNCTION cqrs_shadow.pwn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.sign_in_throttle VALUES ('user', 'admin', 'planted-by-projector', 999, now(),
                                              now() + interval '10 years') ON CONFLICT DO NOTHING;
  INSERT INTO public.events (stream_id, version, event_type, payload, event_id, actor)
  SELECT 'forged-' || gen_random_uuid(), 1, 'Forged', '{"by":"projector"}', gen_random_uuid(), 'alice'
  FROM public.events LIMIT 1;
  RETURN NULL;
END $$;
CREATE TRIGGER pwn AFTER INSERT ON cqrs_shadow.workflow_activity FOR EACH STATEMENT EXECUTE FUNCTION cqrs_shadow.pwn();
UPDATE public.projection_control SET rebuild_txid = '0', rebuild_position = 0, rebuild_done = 0, rebuild_applied = 0,
       rebuild_total = 0, rebuild_requested_at = now() WHERE name = 'workflow_activity';
"""


def plant_shadow(db_url, projector, *, as_group: bool) -> None:
    """Plant the shadow as the projector could before migration 0005 kept it out of cqrs_shadow:
    the owner hands the schema's CREATE back for the planting only, so that this shows the
    rebuild's own check holding by itself."""
    admin = owner(db_url)
    with admin.begin() as conn:
        conn.exec_driver_sql("GRANT USAGE, CREATE ON SCHEMA cqrs_shadow TO cqrs_projector")
    try:
        with projector.begin() as conn:
            if as_group:  # owned by cqrs_projector, which cqrs_app is a member of (and so may drop it)
                conn.exec_driver_sql("SET LOCAL ROLE cqrs_projector")
            conn.exec_driver_sql(PLANT_SHADOW)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql("REVOKE USAGE, CREATE ON SCHEMA cqrs_shadow FROM cqrs_projector")
        admin.dispose()


def attack_effects(db_url) -> dict:
    engine = owner(db_url)
    try:
        return {
            "forged": scalar(engine, "SELECT count(*) FROM events WHERE event_type = 'Forged'"),
            "throttle": scalar(engine, "SELECT count(*) FROM sign_in_throttle"),
            "events": scalar(engine, "SELECT md5(string_agg(e::text, ',' ORDER BY position)) FROM events e"),
        }
    finally:
        engine.dispose()


def activity(db_url) -> list:
    engine = owner(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT * FROM workflow_activity ORDER BY position")).all()
    finally:
        engine.dispose()


def test_a_projector_cannot_plant_a_table_in_the_shadow_schema(seeded):
    with login_as(seeded, "cqrs_projector") as (projector, _url):
        for set_role in ("", "SET LOCAL ROLE cqrs_projector; "):
            with projector.connect() as conn, pytest.raises(DBAPIError, match="permission denied for schema"):
                with conn.begin():
                    conn.exec_driver_sql(
                        set_role + "CREATE TABLE cqrs_shadow.workflow_activity "
                        "(LIKE public.workflow_activity INCLUDING DEFAULTS)"
                    )


@pytest.mark.parametrize("started_by", ["the worker, as requested", "an operator"])
def test_a_planted_resumable_shadow_is_replaced_and_its_trigger_never_runs(seeded, started_by):
    before, rows = attack_effects(seeded), activity(seeded)
    assert rows
    with login_as(seeded, "cqrs_projector") as (projector, _url):
        plant_shadow(seeded, projector, as_group=True)
        engine = make_engine(seeded, role="cqrs_app")
        settings = load_settings(database_url=seeded, lag_sample_seconds=0.2, view_refresh_seconds=0.5)
        try:
            if started_by == "an operator":
                manager = ProjectionManager(engine, settings)
                try:
                    result = manager.rebuild("workflow_activity")
                finally:
                    manager.close()
                assert result.finished and not result.resumed
            else:
                runtime = ProjectionRuntime(engine, settings)
                runtime.start()
                try:
                    wait_until(
                        lambda: not runtime.manager.requested_rebuilds(), 30, "the requested rebuild to run"
                    )
                    status = {s.name: s for s in runtime.manager.status()}["workflow_activity"]
                    assert status.rebuild_error is None and not status.rebuild_interrupted
                finally:
                    assert runtime.stop(timeout=10)
            assert verify(engine, ["workflow_activity"]).ok
        finally:
            engine.dispose()
        shadow = scalar(owner(seeded), "SELECT to_regclass('cqrs_shadow.workflow_activity')::text")
    assert attack_effects(seeded) == before  # nothing forged, nobody locked out
    assert activity(seeded) == rows  # and the rebuild produced the right read model
    assert shadow is None  # the planted table was dropped, the fresh shadow swapped in and dropped


def test_a_planted_shadow_the_runtime_may_not_drop_refuses_the_rebuild_and_runs_nothing(seeded):
    before, rows = attack_effects(seeded), activity(seeded)
    with login_as(seeded, "cqrs_projector") as (projector, _url):
        plant_shadow(seeded, projector, as_group=False)  # owned by the login itself
        engine = make_engine(seeded, role="cqrs_app")
        manager = ProjectionManager(engine, load_settings(database_url=seeded))
        try:
            with pytest.raises(RebuildFailed) as refused:
                manager.rebuild("workflow_activity")
            status = {s.name: s for s in manager.status()}["workflow_activity"]
        finally:
            manager.close()
            engine.dispose()
    assert "have the database owner drop it" in refused.value.user_message
    assert "cqrs_shadow.workflow_activity" in refused.value.user_message
    assert not status.rebuild_requested  # the worker does not try again and again
    assert status.rebuild_error
    assert attack_effects(seeded) == before
    assert activity(seeded) == rows


@pytest.mark.parametrize(
    "tamper",
    [
        "CREATE TRIGGER pwn AFTER INSERT ON cqrs_shadow.workflow_activity FOR EACH STATEMENT "
        "EXECUTE FUNCTION public.events_notify()",
        "CREATE RULE pwn AS ON INSERT TO cqrs_shadow.workflow_activity DO ALSO NOTIFY cqrs_events",
        "ALTER TABLE cqrs_shadow.workflow_activity ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE cqrs_shadow.workflow_activity ADD COLUMN extra int",
        "ALTER TABLE cqrs_shadow.workflow_activity ADD CHECK (position > 0)",
        "ALTER TABLE cqrs_shadow.workflow_activity OWNER TO cqrs_projector",
    ],
)
def test_a_rebuild_resumes_only_into_a_shadow_that_is_its_own_and_runs_no_code(seeded, tamper):
    """Even a shadow made by the rebuild's own role is not resumed into once anything that could run
    code on a write (or a different shape) was added to it; it is dropped and the rebuild starts afresh."""
    rows = activity(seeded)
    engine = make_engine(seeded, role="cqrs_app")
    manager = ProjectionManager(engine, load_settings(database_url=seeded), rebuild_batch_size=1)
    stop = threading.Event()
    try:
        # An interrupted rebuild: stopped after its first batch, shadow and cursor left behind.
        manager.rebuild("workflow_activity", progress=lambda done, total: done and stop.set(), stop=stop)
        admin = owner(seeded)
        with admin.begin() as conn:
            conn.exec_driver_sql(tamper)
        admin.dispose()
        result = manager.rebuild("workflow_activity")
        assert result.finished and not result.resumed
        assert verify(engine, ["workflow_activity"]).ok
    finally:
        manager.close()
        engine.dispose()
    assert activity(seeded) == rows
