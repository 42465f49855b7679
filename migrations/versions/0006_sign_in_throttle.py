"""Failed sign-ins, counted in the database so that every app process sees the same counts.

One row per (user name, client) (`scope = 'user'`) and one per client (`scope = 'client'`,
`user_name = ''`); cqrs_core.app.auth.SignInThrottle reads and writes them. Only the app role may
touch the table: the counts decide who may try a password.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE public.sign_in_throttle (
            scope           text        NOT NULL CHECK (scope IN ('user', 'client')),
            user_name       text        NOT NULL,
            client          text        NOT NULL,
            failures        integer     NOT NULL DEFAULT 0,
            last_failure_at timestamptz,
            locked_until    timestamptz,
            PRIMARY KEY (scope, user_name, client)
        );
        CREATE INDEX sign_in_throttle_last_failure ON public.sign_in_throttle (last_failure_at);
        REVOKE ALL ON public.sign_in_throttle FROM PUBLIC;
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.sign_in_throttle TO cqrs_app;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE public.sign_in_throttle")
