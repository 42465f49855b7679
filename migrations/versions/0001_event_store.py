"""Event store: the append-only `events` log and the command log used for idempotency.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE events (
            position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            -- The writing transaction's id: readers only take events of transactions older than
            -- every transaction still running, so a slow committer is never skipped (see eventlog/store.py).
            txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
            stream_id       text NOT NULL CHECK (stream_id <> '' AND length(stream_id) <= 200),
            version         integer NOT NULL CHECK (version >= 1),
            event_type      text NOT NULL,
            schema_version  smallint NOT NULL DEFAULT 1,
            payload         jsonb NOT NULL,
            event_id        uuid NOT NULL UNIQUE,
            command_id      uuid,
            correlation_id  uuid,
            causation_id    uuid,
            actor           text NOT NULL,
            occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT events_stream_version UNIQUE (stream_id, version)
        );
        CREATE INDEX events_txid_position ON events (txid, position);
        CREATE INDEX events_correlation ON events (correlation_id) WHERE correlation_id IS NOT NULL;
        CREATE INDEX events_type_position ON events (event_type, position);
        -- recorded_at grows with position, so a BRIN index answers "events today" for almost nothing.
        CREATE INDEX events_recorded_at ON events USING brin (recorded_at);

        -- History is never rewritten. Only `demo reset` may empty the log, by setting
        -- cqrs.allow_reset inside its own transaction.
        CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' AND current_setting('cqrs.allow_reset', true) = 'on' THEN
                RETURN NULL;
            END IF;
            RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION events_append_only();
        CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
            FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

        -- Wake projection runners at commit; notifications of one transaction are merged.
        CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cqrs_events', '');
            RETURN NULL;
        END $$;
        CREATE TRIGGER events_notify AFTER INSERT ON events
            FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

        CREATE TABLE command_log (
            command_id      uuid PRIMARY KEY,
            command_type    text NOT NULL,
            actor           text NOT NULL,
            aggregate_id    text,
            correlation_id  uuid,
            result          jsonb NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX command_log_correlation ON command_log (correlation_id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE command_log;
        DROP TABLE events;
        DROP FUNCTION events_notify();
        DROP FUNCTION events_append_only();
        """
    )
