"""Continuous verification (issue 17 part 4): drift findings and the rolling cursor over streams.

* `verification_findings`: one row per drift found, per projection and stream: the differing
  columns, what a replay expected and what the live table held (cut short), when it was found and
  last seen, and when a later pass found the stream right again (`resolved_at`). At most one open
  finding per projection and stream.
* `verification_progress`: one row, the rolling cursor (the last stream id the current round has
  passed), the round's counts and the last pass's figures, so a restarted worker carries on where
  the last pass stopped.

Least privilege: the runtime role (cqrs_app) runs the passes, so it may read and write both tables,
but not delete a finding (a resolved one stays as history) nor add or remove the progress row.
cqrs_reader may read them, as it may read every other engine table. The passes replay into
session-local temporary tables, which need no grant beyond the TEMPORARY right PostgreSQL gives
PUBLIC on every database, and no CREATE on any schema.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE public.verification_findings (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            projection   text        NOT NULL,
            stream_id    text        NOT NULL,
            columns      text[]      NOT NULL,
            details      jsonb       NOT NULL DEFAULT '[]',
            found_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            seen_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            resolved_at  timestamptz
        );
        CREATE UNIQUE INDEX verification_findings_open
            ON public.verification_findings (projection, stream_id) WHERE resolved_at IS NULL;
        CREATE INDEX verification_findings_found_at ON public.verification_findings (found_at DESC);
        REVOKE ALL ON public.verification_findings FROM PUBLIC;
        GRANT SELECT, INSERT, UPDATE ON public.verification_findings TO cqrs_app;
        GRANT SELECT ON public.verification_findings TO cqrs_reader;

        CREATE TABLE public.verification_progress (
            id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
            after_stream          text        NOT NULL DEFAULT '',
            round_started_at      timestamptz,
            round_total           integer     NOT NULL DEFAULT 0,
            round_checked         integer     NOT NULL DEFAULT 0,
            round_skipped         integer     NOT NULL DEFAULT 0,
            rounds_completed      integer     NOT NULL DEFAULT 0,
            last_round_finished_at timestamptz,
            last_round_checked    integer,
            last_round_skipped    integer,
            last_pass_at          timestamptz,
            last_pass_ms          double precision,
            last_pass_checked     integer,
            last_pass_skipped     integer,
            last_pass_events      integer,
            last_pass_error       text
        );
        INSERT INTO public.verification_progress DEFAULT VALUES;
        REVOKE ALL ON public.verification_progress FROM PUBLIC;
        GRANT SELECT, UPDATE ON public.verification_progress TO cqrs_app;
        GRANT SELECT ON public.verification_progress TO cqrs_reader;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE public.verification_progress; DROP TABLE public.verification_findings")
