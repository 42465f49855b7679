"""task_summary.estimate_confidence: how sure a task's estimate is (TaskAdded v2, issue 16).

The column is NULL for every task added before it existed, which is what a replay gives too:
TaskAdded v1 events are upcast with no confidence.

Revision ID: 0009
Revises: 0006
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE public.task_summary ADD COLUMN estimate_confidence text
            CHECK (estimate_confidence IN ('low', 'medium', 'high'))
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE public.task_summary DROP COLUMN estimate_confidence")
