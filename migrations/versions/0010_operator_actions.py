"""operator_actions: the audit timeline of operator and admin actions (issue 17 part 5).

One row per action asked for — pause, resume, rebuild, retry/discard parked, refresh views, demo
seed, live load start/stop, reset, poison — with who, when, what, its parameters and its outcome
(accepted, or refused and why). Rows are only ever inserted; a reset does not empty the table.
Later sources (alert acknowledge and snooze) add rows with actions of their own.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE public.operator_actions (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT clock_timestamp(),
            actor       text NOT NULL,
            role        text NOT NULL,
            action      text NOT NULL,
            parameters  jsonb NOT NULL DEFAULT '{}',
            outcome     text NOT NULL CHECK (outcome IN ('accepted', 'refused')),
            detail      text  -- why it was refused, or what it did
        );
        CREATE INDEX operator_actions_at ON public.operator_actions (at DESC, id DESC);
        GRANT SELECT ON public.operator_actions TO cqrs_reader;
        GRANT SELECT, INSERT ON public.operator_actions TO cqrs_writer, cqrs_app;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE public.operator_actions")
