"""Alerts (issue 17 part 1): the `alert_summary` read model, an index on the alert streams, and a
reset that empties alert_summary too.

An alert is an aggregate in the event log (stream `alert-<uuid>`); `alert_summary` is its read
model, one row per alert, written by the projector role like the other read models and read by
the reader. The alert evaluator finds the open alerts in the log itself (a writer never reads a
read model): `events_alert_streams`, a partial index on the alert streams' events, keeps that to
the alert events however long the log grows.

`cqrs_reset_all` (migration 0005) empties every read model; it is replaced by the same function
with alert_summary in its list (a reset deletes the alert events with the rest of the log).

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

APP_ROLE = "cqrs_app"
READ_MODELS_BEFORE = ("workflow_summary", "task_summary", "workflow_activity")
READ_MODELS = (*READ_MODELS_BEFORE, "alert_summary")
ENGINE_TABLES = ("parked_events", "lag_samples", "view_refreshes")
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


def _reset_function(read_models: tuple[str, ...]) -> str:
    """`cqrs_reset_all` as migration 0005 defines it, emptying `read_models`."""
    tables = _public(read_models)
    engine_tables = _public(ENGINE_TABLES)
    emptied = ", ".join(f"'{t}'" for t in ("events", "command_log", *read_models, *ENGINE_TABLES))
    control_reset = ", ".join(f"{c} = NULL" for c in CONTROL_RESET)
    refresh = "\n".join(f"            REFRESH MATERIALIZED VIEW public.{v};" for v in VIEWS)
    return f"""
        CREATE OR REPLACE FUNCTION public.cqrs_reset_all(reset_by text)
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
            LOCK TABLE public.events, public.command_log, {tables}, {engine_tables} IN ACCESS EXCLUSIVE MODE;
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
            TRUNCATE public.events, public.command_log, {tables}, {engine_tables} RESTART IDENTITY;
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


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE public.alert_summary (
            alert_id         uuid PRIMARY KEY,
            rule             text NOT NULL,
            subject          text NOT NULL,
            severity         text NOT NULL,
            state            text NOT NULL,
            summary          text NOT NULL,
            raised_at        timestamptz NOT NULL,
            acknowledged_by  text,
            acknowledged_at  timestamptz,
            snoozed_until    timestamptz,
            snoozed_by       text,
            resolved_at      timestamptz,
            resolved_by      text,
            last_reason      text,
            last_actor       text NOT NULL,
            updated_at       timestamptz NOT NULL,
            version          integer NOT NULL
        );
        -- The Alerts page: open alerts first, then the latest resolved ones.
        CREATE INDEX alert_summary_open ON public.alert_summary (raised_at DESC) WHERE state <> 'resolved';
        CREATE INDEX alert_summary_resolved ON public.alert_summary (resolved_at DESC) WHERE state = 'resolved';
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.alert_summary TO cqrs_projector;
        GRANT SELECT ON public.alert_summary TO cqrs_reader;

        CREATE INDEX events_alert_streams ON public.events (stream_id, version) WHERE stream_id LIKE 'alert-%';
        """
    )
    op.execute(_reset_function(READ_MODELS))


def downgrade() -> None:
    op.execute(_reset_function(READ_MODELS_BEFORE))
    op.execute("DROP INDEX public.events_alert_streams; DROP TABLE public.alert_summary")
