"""Indexes for the query side's list pages.

* Sort indexes end in workflow_id, the list's tie-breaker, so a page is an ordered index walk
  that stops after its rows (no sort of the whole match set), and a deep page skips its offset
  inside the index (index-only) before reading its own 20 rows. They replace the single-column
  indexes of 0002 on the same columns, so the projections maintain as many indexes as before.
  The NOT NULL sort columns are ordered without NULLS LAST by the handlers, so one index serves
  both directions (a backward scan).
* workflow_summary_filters holds the equality filters of the list (status, methodology,
  priority): the exact total of a filtered list is an index-only count instead of a heap scan
  of every match.

Shadow and scratch copies (CREATE TABLE ... LIKE ... INCLUDING ALL) take these indexes too.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DROP INDEX workflow_summary_created;
        CREATE INDEX workflow_summary_created_id ON workflow_summary (created_at DESC, workflow_id DESC);
        DROP INDEX workflow_summary_last_activity;
        CREATE INDEX workflow_summary_last_activity_id ON workflow_summary (last_activity_at DESC, workflow_id DESC);
        DROP INDEX workflow_summary_title;
        CREATE INDEX workflow_summary_title_id ON workflow_summary (title, workflow_id);
        CREATE INDEX workflow_summary_filters ON workflow_summary (status, methodology, priority);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX workflow_summary_filters;
        DROP INDEX workflow_summary_title_id;
        CREATE INDEX workflow_summary_title ON workflow_summary (title);
        DROP INDEX workflow_summary_last_activity_id;
        CREATE INDEX workflow_summary_last_activity ON workflow_summary (last_activity_at DESC);
        DROP INDEX workflow_summary_created_id;
        CREATE INDEX workflow_summary_created ON workflow_summary (created_at DESC);
        """
    )
