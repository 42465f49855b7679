"""aggregate_snapshots: a workflow's folded state at a version, so a long stream loads from it plus
the events after it (issue 16 part 5).

A snapshot is only a cache of a replay. It records the aggregate's snapshot schema version and the
fingerprint of the code that folded it (the aggregate's fold and the upcasters); the command side
ignores one whose schema version or fingerprint differs from its own, or whose `event_id` is not
the stream's event at that version (the log was reset and the stream written again), and writes a
fresh one by replay. The command side (cqrs_writer) reads and writes it; nobody else needs to.

projection_control.code_version: the version of each projection's code that filled its live
tables; a newer one rebuilds them into shadows and swaps them in by itself.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE public.aggregate_snapshots (
            stream_id       text        PRIMARY KEY,
            version         integer     NOT NULL CHECK (version > 0),
            event_id        uuid        NOT NULL,
            schema_version  integer     NOT NULL,
            fingerprint     text        NOT NULL,
            state           jsonb       NOT NULL,
            taken_at        timestamptz NOT NULL DEFAULT now()
        );
        REVOKE ALL ON public.aggregate_snapshots FROM PUBLIC;
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.aggregate_snapshots TO cqrs_writer;

        -- The version of each projection's code that filled its live tables (NULL until the engine
        -- records it: every projection was at version 1 before this revision).
        ALTER TABLE public.projection_control ADD COLUMN code_version integer;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE public.aggregate_snapshots; ALTER TABLE public.projection_control DROP COLUMN code_version"
    )
