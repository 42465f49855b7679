"""Read side: read-model tables, statistics materialized views, and the projection engine's
own tables (checkpoints, control/status, parked events, lag samples, view refreshes).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- array_to_string is only STABLE in the catalogue (it calls type output functions), but for
        -- text[] it cannot change, so this wrapper may be IMMUTABLE and back a generated column.
        -- A generated column keeps the vector right in every copy of the table (shadow, scratch).
        CREATE FUNCTION workflow_search_vector(title text, tags text[], research_question text)
        RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A')
                || setweight(to_tsvector('english'::regconfig, coalesce(array_to_string(tags, ' '), '')), 'B')
                || setweight(to_tsvector('english'::regconfig, coalesce(research_question, '')), 'C')
        $$;

        CREATE TABLE workflow_summary (
            workflow_id         uuid PRIMARY KEY,
            title               text NOT NULL,
            research_question   text NOT NULL,
            methodology         text NOT NULL,
            status              text NOT NULL,
            priority            text NOT NULL,
            priority_rank       smallint NOT NULL,
            owner               text NOT NULL,
            tags                text[] NOT NULL DEFAULT '{}',
            due_date            date,
            created_at          timestamptz NOT NULL,
            started_at          timestamptz,
            finished_at         timestamptz,
            duration_seconds    double precision,
            task_total          integer NOT NULL DEFAULT 0,
            task_pending        integer NOT NULL DEFAULT 0,
            task_running        integer NOT NULL DEFAULT 0,
            task_completed      integer NOT NULL DEFAULT 0,
            task_failed         integer NOT NULL DEFAULT 0,
            task_cancelled      integer NOT NULL DEFAULT 0,
            progress_pct        double precision NOT NULL DEFAULT 0,
            last_activity_at    timestamptz NOT NULL,
            version             integer NOT NULL,
            -- task id -> status: the projection's own memory of its tasks, so the counts never
            -- depend on another projection's (independently checkpointed) table.
            task_statuses       jsonb NOT NULL DEFAULT '{}',
            search_vector       tsvector GENERATED ALWAYS AS
                                (workflow_search_vector(title, tags, research_question)) STORED
        );
        CREATE INDEX workflow_summary_search ON workflow_summary USING gin (search_vector);
        CREATE INDEX workflow_summary_tags ON workflow_summary USING gin (tags);
        CREATE INDEX workflow_summary_status_created ON workflow_summary (status, created_at DESC);
        CREATE INDEX workflow_summary_methodology_created ON workflow_summary (methodology, created_at DESC);
        CREATE INDEX workflow_summary_owner_created ON workflow_summary (owner, created_at DESC);
        CREATE INDEX workflow_summary_priority_created ON workflow_summary (priority_rank, created_at DESC);
        CREATE INDEX workflow_summary_created ON workflow_summary (created_at DESC);
        CREATE INDEX workflow_summary_last_activity ON workflow_summary (last_activity_at DESC);
        CREATE INDEX workflow_summary_title ON workflow_summary (title);

        CREATE TABLE task_summary (
            workflow_id         uuid NOT NULL,
            task_id             uuid NOT NULL,
            name                text NOT NULL,
            kind                text NOT NULL,
            assignee            text NOT NULL,
            status              text NOT NULL,
            attempts            integer NOT NULL DEFAULT 0,
            estimate_minutes    integer,
            depends_on          text[] NOT NULL DEFAULT '{}',
            created_at          timestamptz NOT NULL,
            started_at          timestamptz,
            finished_at         timestamptz,
            duration_seconds    double precision,
            last_error          text,
            result_summary      text,
            PRIMARY KEY (workflow_id, task_id)
        );
        CREATE INDEX task_summary_assignee ON task_summary (assignee);
        CREATE INDEX task_summary_kind_status ON task_summary (kind, status);

        CREATE TABLE workflow_activity (
            position            bigint PRIMARY KEY,
            workflow_id         uuid NOT NULL,
            event_type          text NOT NULL,
            actor               text NOT NULL,
            occurred_at         timestamptz NOT NULL,
            task_id             uuid,
            task_name           text,
            correlation_id      uuid,
            summary             text NOT NULL
        );
        CREATE INDEX workflow_activity_workflow ON workflow_activity (workflow_id, position);
        -- The projection looks task names up here (its task events do not carry the name).
        CREATE INDEX workflow_activity_task_names ON workflow_activity (workflow_id, task_id)
            WHERE event_type = 'TaskAdded';

        -- Statistics. Each has a unique index so REFRESH ... CONCURRENTLY keeps it readable.
        -- They read the live workflow_summary / task_summary, which is why a projection rebuild
        -- swaps table *contents* and never renames or drops those tables (see projections/engine/rebuild.py).
        CREATE MATERIALIZED VIEW stats_daily_throughput AS
        SELECT day,
               count(*) FILTER (WHERE what = 'created')   AS created,
               count(*) FILTER (WHERE what = 'completed') AS completed,
               count(*) FILTER (WHERE what = 'failed')    AS failed,
               count(*) FILTER (WHERE what = 'cancelled') AS cancelled
        FROM (
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, 'created' AS what FROM workflow_summary
            UNION ALL
            SELECT (finished_at AT TIME ZONE 'UTC')::date, status FROM workflow_summary
            WHERE finished_at IS NOT NULL AND status IN ('completed', 'failed', 'cancelled')
        ) AS happenings
        GROUP BY day;
        CREATE UNIQUE INDEX stats_daily_throughput_day ON stats_daily_throughput (day);

        -- Durations are those of completed workflows: how long a successful study takes.
        CREATE MATERIALIZED VIEW stats_methodology_outcomes AS
        SELECT methodology,
               count(*) AS total,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE status IN ('draft', 'running', 'paused')) AS open,
               (count(*) FILTER (WHERE status = 'completed'))::double precision
                   / NULLIF(count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')), 0)
                   AS success_rate,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds)
                   FILTER (WHERE status = 'completed') AS median_duration_seconds,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_seconds)
                   FILTER (WHERE status = 'completed') AS p90_duration_seconds,
               avg(task_total)::double precision AS mean_tasks
        FROM workflow_summary
        GROUP BY methodology;
        CREATE UNIQUE INDEX stats_methodology_outcomes_methodology ON stats_methodology_outcomes (methodology);

        -- failure_rate: failed / finished (completed + failed); retry_rate: tasks that needed more
        -- than one attempt / tasks started at least once; durations of completed tasks.
        CREATE MATERIALIZED VIEW stats_task_kind AS
        SELECT kind,
               count(*) AS total,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               COALESCE(sum(GREATEST(attempts - 1, 0)), 0) AS retries,
               (count(*) FILTER (WHERE status = 'failed'))::double precision
                   / NULLIF(count(*) FILTER (WHERE status IN ('completed', 'failed')), 0) AS failure_rate,
               (count(*) FILTER (WHERE attempts > 1))::double precision
                   / NULLIF(count(*) FILTER (WHERE attempts >= 1), 0) AS retry_rate,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds)
                   FILTER (WHERE status = 'completed') AS p50_duration_seconds,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_seconds)
                   FILTER (WHERE status = 'completed') AS p90_duration_seconds
        FROM task_summary
        GROUP BY kind;
        CREATE UNIQUE INDEX stats_task_kind_kind ON stats_task_kind (kind);

        CREATE MATERIALIZED VIEW stats_assignee_load AS
        SELECT assignee,
               count(*) FILTER (WHERE status IN ('pending', 'running')) AS open_tasks,
               count(*) FILTER (WHERE status = 'running') AS running_tasks,
               count(*) FILTER (WHERE status = 'completed') AS completed_tasks,
               count(*) FILTER (WHERE status = 'failed') AS failed_tasks,
               count(*) AS total_tasks
        FROM task_summary
        GROUP BY assignee;
        CREATE UNIQUE INDEX stats_assignee_load_assignee ON stats_assignee_load (assignee);

        CREATE TABLE view_refreshes (
            view_name       text PRIMARY KEY,
            refreshed_at    timestamptz NOT NULL,
            duration_ms     double precision NOT NULL,
            row_count       bigint NOT NULL
        );

        -- The projection engine. A checkpoint is a LogCursor (txid, position), never a bare
        -- position: the log is read in (txid, position) order (see eventlog/store.py).
        CREATE TABLE projection_checkpoints (
            name            text PRIMARY KEY,
            last_txid       xid8 NOT NULL DEFAULT '0',
            last_position   bigint NOT NULL DEFAULT 0,
            events_applied  bigint NOT NULL DEFAULT 0,
            updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
        );

        CREATE TABLE projection_control (
            name                 text PRIMARY KEY REFERENCES projection_checkpoints (name),
            desired_state        text NOT NULL DEFAULT 'running' CHECK (desired_state IN ('running', 'paused')),
            state                text NOT NULL DEFAULT 'stopped' CHECK (state IN
                                 ('running', 'paused', 'catching_up', 'rebuilding', 'faulted', 'stopped')),
            failure_policy       text NOT NULL DEFAULT 'skip' CHECK (failure_policy IN ('skip', 'fault')),
            last_error           text,
            last_error_at        timestamptz,
            owner                text,
            heartbeat_at         timestamptz,
            -- rebuild: requested (asynchronous), progress, and the shadow's own cursor so a killed
            -- rebuild resumes where it stopped.
            rebuild_requested_at timestamptz,
            rebuild_owner        text,
            rebuild_started_at   timestamptz,
            rebuild_heartbeat_at timestamptz,
            rebuild_done         bigint,
            rebuild_done_at_start bigint,
            rebuild_total        bigint,
            rebuild_applied      bigint,
            rebuild_txid         xid8,
            rebuild_position     bigint,
            rebuild_finished_at  timestamptz,
            rebuild_error        text
        );

        CREATE TABLE parked_events (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            projection      text NOT NULL REFERENCES projection_checkpoints (name),
            position        bigint NOT NULL,
            txid            xid8 NOT NULL,
            event_id        uuid NOT NULL,
            event_type      text NOT NULL,
            error           text NOT NULL,
            attempts        integer NOT NULL,
            parked_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            status          text NOT NULL DEFAULT 'parked' CHECK (status IN ('parked', 'retried', 'discarded')),
            resolved_at     timestamptz,
            CONSTRAINT parked_events_once UNIQUE (projection, event_id)
        );
        CREATE INDEX parked_events_open ON parked_events (projection, position) WHERE status = 'parked';

        CREATE TABLE lag_samples (
            projection          text NOT NULL,
            sampled_at          timestamptz NOT NULL,
            position            bigint NOT NULL,
            head                bigint NOT NULL,
            lag_events          bigint NOT NULL,
            lag_seconds         double precision NOT NULL,
            events_per_second   double precision NOT NULL,
            events_applied      bigint NOT NULL,
            PRIMARY KEY (projection, sampled_at)
        );
        CREATE INDEX lag_samples_sampled_at ON lag_samples (sampled_at);

        INSERT INTO projection_checkpoints (name)
        VALUES ('workflow_summary'), ('task_summary'), ('workflow_activity');
        INSERT INTO projection_control (name, failure_policy)
        VALUES ('workflow_summary', 'fault'), ('task_summary', 'skip'), ('workflow_activity', 'skip');
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE lag_samples;
        DROP TABLE parked_events;
        DROP TABLE projection_control;
        DROP TABLE projection_checkpoints;
        DROP TABLE view_refreshes;
        DROP MATERIALIZED VIEW stats_assignee_load;
        DROP MATERIALIZED VIEW stats_task_kind;
        DROP MATERIALIZED VIEW stats_methodology_outcomes;
        DROP MATERIALIZED VIEW stats_daily_throughput;
        DROP TABLE workflow_activity;
        DROP TABLE task_summary;
        DROP TABLE workflow_summary;
        DROP FUNCTION workflow_search_vector(text, text[], text);
        """
    )
