"""Two read-model columns, filled from the log for existing rows (no rebuild needed for them):

* `task_summary.added_version`: the stream version of the task's TaskAdded (a task removed and
  added again takes its new place). The read side lists a workflow's tasks by it; before, tasks
  added by one command (same time) came out by name.
* `workflow_summary.paused_at`: while a workflow is paused, when it was paused (its caption said
  "running for ..." of a paused workflow).
* An index on `workflow_activity.occurred_at`: the Overview counts "events today" and lists the
  recent activity by when events happened (one clock for both).
* A rebuild of `task_summary` and `workflow_summary` is requested when a row shows an ended
  workflow with a task still pending or running (projected by older code).

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

        ALTER TABLE public.workflow_summary ADD COLUMN paused_at timestamptz;
        UPDATE public.workflow_summary AS w SET paused_at = p.at
        FROM (SELECT DISTINCT ON (stream_id) stream_id, occurred_at AS at FROM public.events
              WHERE event_type = 'WorkflowPaused' AND stream_id LIKE 'workflow-%'
              ORDER BY stream_id, version DESC) AS p
        WHERE w.status = 'paused' AND p.stream_id = 'workflow-' || w.workflow_id::text;

        CREATE INDEX workflow_activity_occurred ON public.workflow_activity (occurred_at DESC, position DESC);
        """
    )
    # Read models projected by older code left the pending and running tasks of ended workflows
    # open (assignee load, task counts). The projections now fold those ends as closing them, so a
    # rebuild corrects the rows: ask the runners for one, as an operator would, only when such a
    # row exists. The Projections page shows its progress; the live tables serve until the swap.
    op.execute(
        """
        UPDATE public.projection_control SET rebuild_requested_at = clock_timestamp(), rebuild_error = NULL
        WHERE name IN ('task_summary', 'workflow_summary')
          AND EXISTS (SELECT 1 FROM public.task_summary AS t
                      JOIN public.workflow_summary AS w ON w.workflow_id = t.workflow_id
                      WHERE w.status IN ('completed', 'failed', 'cancelled')
                        AND t.status IN ('pending', 'running'))
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX public.workflow_activity_occurred")
    op.execute("ALTER TABLE public.workflow_summary DROP COLUMN paused_at")
    op.execute("ALTER TABLE public.task_summary DROP COLUMN added_version")
