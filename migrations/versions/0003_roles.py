"""Database roles for a least-privilege deployment.

* cqrs_writer    — the command side: reads and appends `events`, records `command_log`.
                   No UPDATE, DELETE or TRUNCATE anywhere: it can add history, never change it.
* cqrs_projector — the projection runners: reads the log, writes the read models and the
                   engine's own tables, creates shadow tables for rebuilds, refreshes the
                   statistics views through `cqrs_refresh_view` (REFRESH needs ownership before
                   PostgreSQL 17, so the function runs as the owner and accepts only our views).
* cqrs_reader    — the query side (e.g. CQRS_READ_DATABASE_URL): SELECT only. It may read the
                   log too, because the event explorer and read-your-writes read it.

Roles are cluster-wide, so they are created only when missing; grants are per database.
Nobody, the owner included, can UPDATE or DELETE events: the append-only triggers of 0001 refuse.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

READ_MODELS = "workflow_summary, task_summary, workflow_activity"
ENGINE_TABLES = "projection_checkpoints, projection_control, parked_events, lag_samples, view_refreshes"
VIEWS = "stats_daily_throughput, stats_methodology_outcomes, stats_task_kind, stats_assignee_load"


def upgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE r text;
        BEGIN
            FOREACH r IN ARRAY ARRAY['cqrs_writer', 'cqrs_projector', 'cqrs_reader'] LOOP
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
                    EXECUTE format('CREATE ROLE %I LOGIN', r);
                END IF;
            END LOOP;
        END $$;
        """
    )
    op.execute(
        f"""
        DO $$ BEGIN
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO cqrs_writer, cqrs_projector, cqrs_reader',
                           current_database());
        END $$;
        GRANT USAGE ON SCHEMA public TO cqrs_writer, cqrs_projector, cqrs_reader;

        GRANT SELECT, INSERT ON events, command_log TO cqrs_writer;

        GRANT SELECT ON events, command_log TO cqrs_projector;
        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {READ_MODELS}, {ENGINE_TABLES} TO cqrs_projector;
        GRANT SELECT ON {VIEWS} TO cqrs_projector;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO cqrs_projector;
        GRANT CREATE ON SCHEMA public TO cqrs_projector;

        GRANT SELECT ON {READ_MODELS}, {ENGINE_TABLES}, {VIEWS}, events, command_log TO cqrs_reader;

        -- search_path pinned at pg_catalog: a definer function must not resolve names in a schema
        -- a caller can write to (0005 replaces this function in databases migrated before).
        CREATE FUNCTION cqrs_refresh_view(view_name text, nonblocking boolean DEFAULT true)
        RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            IF view_name NOT IN ('stats_daily_throughput', 'stats_methodology_outcomes', 'stats_task_kind',
                                 'stats_assignee_load') THEN
                RAISE EXCEPTION 'not a statistics view: %', view_name USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF nonblocking THEN
                EXECUTE pg_catalog.format('REFRESH MATERIALIZED VIEW CONCURRENTLY public.%I', view_name);
            ELSE
                EXECUTE pg_catalog.format('REFRESH MATERIALIZED VIEW public.%I', view_name);
            END IF;
        END $$;
        REVOKE ALL ON FUNCTION cqrs_refresh_view(text, boolean) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION cqrs_refresh_view(text, boolean) TO cqrs_projector;
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DROP FUNCTION cqrs_refresh_view(text, boolean);
        REVOKE CREATE ON SCHEMA public FROM cqrs_projector;
        REVOKE ALL ON {READ_MODELS}, {ENGINE_TABLES}, {VIEWS}, events, command_log
            FROM cqrs_writer, cqrs_projector, cqrs_reader;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM cqrs_projector;
        REVOKE USAGE ON SCHEMA public FROM cqrs_writer, cqrs_projector, cqrs_reader;
        DO $$ BEGIN
            EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM cqrs_writer, cqrs_projector, cqrs_reader',
                           current_database());
        END $$;
        """
    )
