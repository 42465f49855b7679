"""Tasks keep the order they were added: `task_summary.added_version`, the stream version of the
task's TaskAdded (a task removed and added again takes its new place). The read side lists a
workflow's tasks by it; before, tasks added by one command (same time) came out by name.

Existing rows are filled from the log, so no rebuild is needed for the order.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE public.task_summary ADD COLUMN added_version integer;
        UPDATE public.task_summary AS t SET added_version = a.version
        FROM (SELECT e.stream_id, e.payload ->> 'task_id' AS task_id, max(e.version) AS version
              FROM public.events AS e
              WHERE e.event_type = 'TaskAdded' AND e.stream_id LIKE 'workflow-%'
              GROUP BY 1, 2) AS a
        WHERE a.stream_id = 'workflow-' || t.workflow_id::text AND a.task_id = t.task_id::text;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE public.task_summary DROP COLUMN added_version")
