"""alert_deliveries: one row per alert notification sent to a webhook (issue 17 part 2).

Keyed by the alert and the step (its stream's version after the change), so one state change of an
alert is one row: the notifier looks a key up before it POSTs and never sends a delivered one again,
also after a restart of the process. The row says where it went (the webhook URL as `redact()` shows
it: never its token), how many tries it took, the last error and when it arrived. Rows are written
when the database is reachable; a notification sent during an outage is recorded on recovery.
A reset of the event log keeps them, like the audit timeline: they say what the outside world was told.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE public.alert_deliveries (
            alert_id         text        NOT NULL,
            step             integer     NOT NULL,
            rule             text        NOT NULL,
            severity         text        NOT NULL,
            subject          text        NOT NULL,
            alert_state      text        NOT NULL,  -- raised, acknowledged, snoozed or resolved
            summary          text        NOT NULL,
            occurred_at      timestamptz NOT NULL,  -- when the alert changed
            url              text        NOT NULL,  -- redacted
            status           text        NOT NULL
                             CHECK (status IN ('sending', 'delivered', 'failed', 'dropped')),
            attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            last_error       text,
            last_attempt_at  timestamptz,
            next_attempt_at  timestamptz,
            delivered_at     timestamptz,
            updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (alert_id, step)
        );
        CREATE INDEX alert_deliveries_recent ON public.alert_deliveries (updated_at DESC);
        REVOKE ALL ON public.alert_deliveries FROM PUBLIC;
        GRANT SELECT ON public.alert_deliveries TO cqrs_reader;
        GRANT SELECT, INSERT, UPDATE ON public.alert_deliveries TO cqrs_app;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE public.alert_deliveries")
