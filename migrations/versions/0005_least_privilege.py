"""Least privilege that holds: safe definer functions, no CREATE on public, group roles, audited reset.

* Every function runs with `search_path = pg_catalog, pg_temp` and names its relations with their
  schema. A SECURITY DEFINER function whose search_path includes a schema someone else can create
  in runs their code as the owner (0003's `cqrs_refresh_view` did, with CREATE on public granted
  to cqrs_projector). pg_temp comes last, and PostgreSQL never looks up functions or operators in
  it, so nothing a session plants is found.
* Nobody but the owner creates in `public` (PostgreSQL 14 and older grant it to PUBLIC). Rebuild
  shadows live in the schema `cqrs_shadow`, where only cqrs_app may create tables; no code running
  as the owner reads anything there by an unqualified name. Not cqrs_projector: a table it planted
  there, with a trigger, would be written by the next rebuild, running the trigger with the
  rights of the session that rebuilds (cqrs_app: writer too, and allowed to reset). So a
  projector-only login runs projections but cannot rebuild; a rebuild also trusts a shadow it
  finds only if it owns it and nothing on it runs code (cqrs_core/projections/engine/rebuild.py).
* cqrs_writer, cqrs_projector and cqrs_reader are NOLOGIN group roles: an admin grants them to
  login roles (or sets a password on a login role of their own). `cqrs_app` is a member of all
  three: what one app or worker process needs. The runtime connects as a role that is a member of
  cqrs_app and switches to it (`SET ROLE`, see cqrs_core/infra/db.py); the migrating user is granted
  cqrs_app so that it can. Roles are cluster-wide: created when missing, and two databases
  migrating at once on one server both succeed.
* The projector keeps no TRUNCATE, and no sequence rights (identity columns need none).
* `demo reset` goes through `cqrs_reset_all(reset_by)`, a SECURITY DEFINER function only cqrs_app
  may execute. It writes who reset, when, and what it deleted into `reset_audit`, which it never
  empties, and lifts the append-only trigger on `events` for its own TRUNCATE only (ALTER TABLE
  in its own transaction). The trigger no longer honours `cqrs.allow_reset`, which any session
  could set. Shadows are dropped, not truncated: a TRUNCATE fires triggers, and a table planted in
  cqrs_shadow with a trigger would run the planter's code as the owner.

The owner (the migrating user; the superuser in embedded mode) can still do anything: disable the
triggers, rewrite events, drop tables. The append-only guarantee holds for every role the app uses.
Downgrade keeps the roles NOLOGIN (other databases on the server may rely on that).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

GROUP_ROLES = ("cqrs_writer", "cqrs_projector", "cqrs_reader")
APP_ROLE = "cqrs_app"
READ_MODELS = ("workflow_summary", "task_summary", "workflow_activity")
ENGINE_TABLES = ("parked_events", "lag_samples", "view_refreshes")  # emptied by a reset
CONTROL_TABLES = ("projection_checkpoints", "projection_control")  # kept, rewound by a reset
VIEWS = ("stats_daily_throughput", "stats_methodology_outcomes", "stats_task_kind", "stats_assignee_load")
SAFE_PATH = "SET search_path = pg_catalog, pg_temp"
CONTROL_RESET = (
    "last_error",
    "last_error_at",
    "rebuild_requested_at",
    "rebuild_owner",
    "rebuild_started_at",
    "rebuild_heartbeat_at",
    "rebuild_done",
    "rebuild_done_at_start",
    "rebuild_total",
    "rebuild_applied",
    "rebuild_txid",
    "rebuild_position",
    "rebuild_finished_at",
    "rebuild_error",
)


def _public(names: tuple[str, ...]) -> str:
    return ", ".join(f"public.{n}" for n in names)


def _roles() -> None:
    """Create or convert the roles; each statement tolerates another database's migration doing the
    same at the same moment (duplicate role or membership, or 'tuple concurrently updated')."""
    roles = ", ".join(f"'{r}'" for r in (*GROUP_ROLES, APP_ROLE))
    members = ", ".join(f"'{r}'" for r in GROUP_ROLES)
    op.execute(
        f"""
        DO $$
        DECLARE r text;
        BEGIN
            FOREACH r IN ARRAY ARRAY[{roles}] LOOP
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                    BEGIN
                        EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
                    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                    END;
                END IF;
                IF (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                    BEGIN
                        EXECUTE pg_catalog.format('ALTER ROLE %I NOLOGIN', r);
                    EXCEPTION WHEN internal_error THEN NULL;
                    END;
                END IF;
            END LOOP;
            FOREACH r IN ARRAY ARRAY[{members}] LOOP
                IF NOT pg_catalog.pg_has_role('{APP_ROLE}', r, 'MEMBER') THEN
                    BEGIN
                        EXECUTE pg_catalog.format('GRANT %I TO {APP_ROLE}', r);
                    EXCEPTION WHEN unique_violation OR internal_error THEN NULL;
                    END;
                END IF;
            END LOOP;
            -- The migrating user runs the app too (CQRS_DATABASE_URL): it must be able to SET ROLE.
            -- (PostgreSQL 16 separates SET from membership: a creator's own grant may lack it.)
            IF NOT (CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
                         THEN pg_catalog.pg_has_role(current_user, '{APP_ROLE}', 'SET')
                         ELSE pg_catalog.pg_has_role(current_user, '{APP_ROLE}', 'MEMBER') END) THEN
                BEGIN
                    EXECUTE pg_catalog.format('GRANT {APP_ROLE} TO %I', current_user);
                EXCEPTION WHEN unique_violation OR internal_error THEN NULL;
                END;
            END IF;
        END $$;
        """
    )


def _functions() -> None:
    views = ", ".join(f"'{v}'" for v in VIEWS)
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION public.events_append_only() RETURNS trigger
        LANGUAGE plpgsql {SAFE_PATH} AS $$
        BEGIN
            RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;

        CREATE OR REPLACE FUNCTION public.events_notify() RETURNS trigger
        LANGUAGE plpgsql {SAFE_PATH} AS $$
        BEGIN
            PERFORM pg_catalog.pg_notify('cqrs_events', '');
            RETURN NULL;
        END $$;

        -- Every name qualified and no SET clause: a SET would stop the planner inlining this function
        -- into the generated column (evaluated on every write of a workflow_summary row), and a
        -- fully qualified body does not depend on the caller's search_path anyway.
        CREATE OR REPLACE FUNCTION public.workflow_search_vector(title text, tags text[], research_question text)
        RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT pg_catalog.setweight(pg_catalog.to_tsvector('pg_catalog.english'::pg_catalog.regconfig,
                                                              COALESCE(title, '')), 'A')
                OPERATOR(pg_catalog.||) pg_catalog.setweight(pg_catalog.to_tsvector(
                    'pg_catalog.english'::pg_catalog.regconfig,
                    COALESCE(pg_catalog.array_to_string(tags, ' '), '')), 'B')
                OPERATOR(pg_catalog.||) pg_catalog.setweight(pg_catalog.to_tsvector(
                    'pg_catalog.english'::pg_catalog.regconfig, COALESCE(research_question, '')), 'C')
        $$;

        CREATE OR REPLACE FUNCTION public.cqrs_refresh_view(view_name text, nonblocking boolean DEFAULT true)
        RETURNS void LANGUAGE plpgsql SECURITY DEFINER {SAFE_PATH} AS $$
        BEGIN
            IF view_name IS NULL OR view_name NOT IN ({views}) THEN
                RAISE EXCEPTION 'not a statistics view: %', view_name USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF nonblocking THEN
                EXECUTE pg_catalog.format('REFRESH MATERIALIZED VIEW CONCURRENTLY public.%I', view_name);
            ELSE
                EXECUTE pg_catalog.format('REFRESH MATERIALIZED VIEW public.%I', view_name);
            END IF;
        END $$;
        REVOKE ALL ON FUNCTION public.cqrs_refresh_view(text, boolean) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION public.cqrs_refresh_view(text, boolean) TO cqrs_projector;
        """
    )


def _reset() -> None:
    read_models = _public(READ_MODELS)
    engine_tables = _public(ENGINE_TABLES)
    emptied = ", ".join(f"'{t}'" for t in ("events", "command_log", *READ_MODELS, *ENGINE_TABLES))
    control_reset = ", ".join(f"{c} = NULL" for c in CONTROL_RESET)
    refresh = "\n".join(f"            REFRESH MATERIALIZED VIEW public.{v};" for v in VIEWS)
    op.execute(
        f"""
        CREATE TABLE public.reset_audit (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            reset_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
            reset_by        text NOT NULL,      -- the person, as the app knows them
            database_user   text NOT NULL,      -- the login role of the session that asked
            events          bigint NOT NULL,
            commands        bigint NOT NULL,
            tables          text[] NOT NULL
        );
        GRANT SELECT ON public.reset_audit TO cqrs_reader;

        CREATE FUNCTION public.cqrs_reset_all(reset_by text)
        RETURNS TABLE (deleted_events bigint, deleted_commands bigint, emptied_tables text[])
        LANGUAGE plpgsql SECURITY DEFINER {SAFE_PATH} AS $$
        DECLARE
            n_events bigint;
            n_commands bigint;
            tables text[] := ARRAY[{emptied}];
            shadow text;
        BEGIN
            -- Blank after trimming any white space (tabs and newlines too, not only spaces).
            IF reset_by IS NULL OR reset_by OPERATOR(pg_catalog.~) '^\\s*$' OR pg_catalog.length(reset_by) > 200 THEN
                RAISE EXCEPTION 'a reset needs the name of who asked for it' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            -- All locks first, in one statement, so a busy table fails fast under the caller's lock_timeout.
            LOCK TABLE public.events, public.command_log, {read_models}, {engine_tables} IN ACCESS EXCLUSIVE MODE;
            SELECT pg_catalog.count(*) INTO n_events FROM public.events;
            SELECT pg_catalog.count(*) INTO n_commands FROM public.command_log;
            FOR shadow IN
                SELECT c.relname FROM pg_catalog.pg_class c
                WHERE c.relnamespace = 'cqrs_shadow'::pg_catalog.regnamespace AND c.relkind IN ('r', 'p')
                ORDER BY c.relname
            LOOP
                EXECUTE pg_catalog.format('DROP TABLE IF EXISTS cqrs_shadow.%I CASCADE', shadow);
                tables := tables OPERATOR(pg_catalog.||) ('cqrs_shadow.' OPERATOR(pg_catalog.||) shadow);
            END LOOP;
            ALTER TABLE public.events DISABLE TRIGGER events_no_truncate;
            TRUNCATE public.events, public.command_log, {read_models}, {engine_tables} RESTART IDENTITY;
            ALTER TABLE public.events ENABLE TRIGGER events_no_truncate;
            UPDATE public.projection_checkpoints
               SET last_txid = '0', last_position = 0, events_applied = 0, updated_at = pg_catalog.clock_timestamp();
            -- Errors and rebuild progress go; a faulted projection may run again; a pause an operator set stays.
            UPDATE public.projection_control
               SET {control_reset}, state = CASE WHEN state = 'faulted' THEN 'stopped' ELSE state END;
{refresh}
            INSERT INTO public.reset_audit (reset_by, database_user, events, commands, tables)
            VALUES (reset_by, session_user, n_events, n_commands, tables);
            RETURN QUERY SELECT n_events, n_commands, tables;
        END $$;
        REVOKE ALL ON FUNCTION public.cqrs_reset_all(text) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION public.cqrs_reset_all(text) TO {APP_ROLE};
        """
    )


def upgrade() -> None:
    _roles()
    groups = ", ".join(GROUP_ROLES)
    op.execute(
        f"""
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
        REVOKE CREATE ON SCHEMA public FROM {groups}, {APP_ROLE};
        REVOKE TRUNCATE ON {_public(READ_MODELS)}, {_public(ENGINE_TABLES)}, {_public(CONTROL_TABLES)}
            FROM cqrs_projector;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM cqrs_projector;
        GRANT SELECT ON public.alembic_version TO cqrs_reader;

        -- Shadows of a rebuild interrupted before this revision; the next rebuild starts afresh here.
        DROP TABLE IF EXISTS {", ".join(f"public.{t}__shadow" for t in READ_MODELS)};
        CREATE SCHEMA cqrs_shadow;
        REVOKE ALL ON SCHEMA cqrs_shadow FROM PUBLIC;
        GRANT USAGE, CREATE ON SCHEMA cqrs_shadow TO {APP_ROLE};
        """
    )
    _functions()
    _reset()


def downgrade() -> None:
    op.execute(
        f"""
        DROP FUNCTION public.cqrs_reset_all(text);
        DROP TABLE public.reset_audit;
        DROP SCHEMA cqrs_shadow CASCADE;
        REVOKE SELECT ON public.alembic_version FROM cqrs_reader;
        GRANT TRUNCATE ON {_public(READ_MODELS)}, {_public(ENGINE_TABLES)}, {_public(CONTROL_TABLES)}
            TO cqrs_projector;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO cqrs_projector;
        GRANT CREATE ON SCHEMA public TO cqrs_projector;

        CREATE OR REPLACE FUNCTION public.events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' AND current_setting('cqrs.allow_reset', true) = 'on' THEN
                RETURN NULL;
            END IF;
            RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        ALTER FUNCTION public.events_append_only() RESET ALL;
        ALTER FUNCTION public.events_notify() RESET ALL;
        ALTER FUNCTION public.cqrs_refresh_view(text, boolean) SET search_path = public;
        """
    )
