"""Appends wake the projections without a NOTIFY in every write transaction (issue 18).

Until now the `events_notify` trigger sent `pg_notify('cqrs_events', '')` from every transaction
that appended. PostgreSQL serialises the commits of notifying transactions on one global lock,
which capped concurrent writers. A session that sets `cqrs.append_notify = 'coalesced'` (the
command bus's connections: `make_engine(coalesced_notify=True)`) now appends without it: its
process sends the NOTIFY itself, after the commit, at most once per few milliseconds for all of
its appends (`eventlog/notifier.py`). Every other session (psql, a pooler in transaction mode, an
older process) still notifies per transaction. A session that sets the option and never notifies
only delays the projections to their poll, never loses an event: the log is read by position.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DROP TRIGGER events_notify ON events;
        CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH STATEMENT
            WHEN (pg_catalog.current_setting('cqrs.append_notify', true) IS DISTINCT FROM 'coalesced')
            EXECUTE FUNCTION public.events_notify();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER events_notify ON events;
        CREATE TRIGGER events_notify AFTER INSERT ON events
            FOR EACH STATEMENT EXECUTE FUNCTION public.events_notify();
        """
    )
