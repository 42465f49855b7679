"""Per-actor rate limits kept in the database, so that they hold across every process of a
deployment instead of once per process.

One token bucket per (limit, actor): `tokens` as of `refilled_at`, refilled at the limit's rate
up to its burst whenever a process takes a lease of tokens from it (cqrs_core.infra.rate_limit).
`granted` is what the last lease took, returned by the same statement. A missing row is a full
bucket, so rows whose bucket has filled up again may be deleted at any time.

UNLOGGED: a lease then writes no WAL and its commit waits for no disk flush (a command already
waits for one). A crash empties the table, which gives every actor a full bucket: what a restart
of the old in-process limiter did.

Commands are limited by the command side (`cqrs_writer`, which a command-only client logs in as)
and queries by the app; `cqrs_app` is a member of `cqrs_writer` but is granted the table itself
too, so that it keeps it whatever becomes of that membership. No other role may touch it: the
buckets decide who may act.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE UNLOGGED TABLE public.rate_limit_buckets (
            limit_name  text             NOT NULL,
            actor       text             NOT NULL,
            tokens      double precision NOT NULL CHECK (tokens >= 0),
            granted     double precision NOT NULL DEFAULT 0 CHECK (granted >= 0),
            refilled_at timestamptz      NOT NULL,
            PRIMARY KEY (limit_name, actor)
        );
        REVOKE ALL ON public.rate_limit_buckets FROM PUBLIC;
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.rate_limit_buckets TO cqrs_writer, cqrs_app;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE public.rate_limit_buckets")
