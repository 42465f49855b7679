"""Sign-in sessions, kept in the database so that every app process agrees on who is signed in
and a signed-out (revoked) session is refused by all of them.

One row per password sign-in. `session_id` never leaves the server (the Streamlit session keeps
it, to revoke the row on sign-out). The browser holds a token in an HttpOnly cookie (signed with
`server.cookieSecret`, cqrs_core.app.sessions); the table holds only its SHA-256, and the one-time
hand-over ticket's, so reading the table gives no one a usable cookie. Only the app role may touch
the table.

Revision ID: 0008
Revises: 0006 (the merge re-chains it after 0007)
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE public.console_sessions (
            session_id      text        PRIMARY KEY,
            user_name       text        NOT NULL,
            token_hash      bytea       UNIQUE,
            created_at      timestamptz NOT NULL,
            expires_at      timestamptz NOT NULL,
            revoked_at      timestamptz,
            ticket_hash     bytea       UNIQUE,
            ticket_until    timestamptz,
            -- HMACs under server.cookieSecret (which the database never sees): `credential` binds
            -- the session to the user and the password hash it was opened with, `binding` binds
            -- the cookie's token to that. A row changed behind the app's back (another user name,
            -- another token) or a password changed since then no longer matches: signed out.
            credential      bytea,
            binding         bytea
        );
        CREATE INDEX console_sessions_expires_at ON public.console_sessions (expires_at);
        REVOKE ALL ON public.console_sessions FROM PUBLIC;
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.console_sessions TO cqrs_app;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE public.console_sessions")
