"""Partitioned projections: one checkpoint per partition of a projection.

A projection split into K partitions (by a hash of the stream id, `eventlog/partitions.py`) keeps
one row per partition in `projection_partitions`: its own cursor in the gap-free log order (every
partition walks the whole log and applies the events of its own streams), its applied count, and
the worker that holds it (`owner`, `heartbeat_at`, for the Projections page; the advisory lock
decides who runs it).

`projection_checkpoints.partitions` is the projection's layout: 1 (no partition rows; the row's
own cursor is the checkpoint, as before) or K. A batch of the unpartitioned runner reads it from
the row it locks, so a layout change (made under that row's lock) is never missed. For K > 1
the row's cursor is the low-water mark of the partitions (every event at or before it is applied
by every partition): read-your-writes, lag and the query cache read it unchanged.

A reset (`cqrs_reset_all`) rewinds every checkpoint row to the origin; a trigger rewinds the
partitions of that projection with it, so the reset function itself is left as it is.

Revision ID: 0017
Revises: 0015
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE public.projection_checkpoints
            ADD COLUMN partitions integer NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 64);

        CREATE TABLE public.projection_partitions (
            name            text NOT NULL REFERENCES public.projection_checkpoints (name),
            partition       integer NOT NULL,
            partitions      integer NOT NULL CHECK (partitions BETWEEN 2 AND 64),
            last_txid       xid8 NOT NULL DEFAULT '0',
            last_position   bigint NOT NULL DEFAULT 0,
            events_applied  bigint NOT NULL DEFAULT 0,
            owner           text,
            heartbeat_at    timestamptz,
            updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (name, partition),
            CHECK (partition >= 0 AND partition < partitions)
        );
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.projection_partitions TO cqrs_projector;
        GRANT SELECT ON public.projection_partitions TO cqrs_reader;

        CREATE FUNCTION public.cqrs_rewind_partitions() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            UPDATE public.projection_partitions
               SET last_txid = '0', last_position = 0, events_applied = 0,
                   updated_at = pg_catalog.clock_timestamp()
             WHERE name = NEW.name;
            RETURN NULL;
        END $$;
        CREATE TRIGGER projection_checkpoints_rewind_partitions
            AFTER UPDATE ON public.projection_checkpoints
            FOR EACH ROW
            WHEN (NEW.last_position = 0 AND NEW.last_txid = '0'
                  AND (OLD.last_position <> 0 OR OLD.last_txid <> '0'))
            EXECUTE FUNCTION public.cqrs_rewind_partitions();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER projection_checkpoints_rewind_partitions ON public.projection_checkpoints;
        DROP FUNCTION public.cqrs_rewind_partitions();
        DROP TABLE public.projection_partitions;
        ALTER TABLE public.projection_checkpoints DROP COLUMN partitions;
        """
    )
