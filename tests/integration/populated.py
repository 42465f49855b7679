"""A database populated through the command path, and how to compare two of them row by row."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cqrs_core import CQRSServiceBuilder
from cqrs_core.infra.config import load_settings
from cqrs_core.tools.workload.plans import WorkloadGenerator
from cqrs_core.tools.workload.runners import execute_plan

LOG = "SELECT * FROM events ORDER BY position"
CHECKPOINTS = (
    "SELECT name, last_txid::text, last_position, events_applied FROM projection_checkpoints ORDER BY 1"
)


def rows(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def populate(url: str, workflows: int = 12) -> None:
    """Commands through the service (workflows with tasks moving through their lifecycle), then
    the projections caught up. Transaction ids are spent first, so that the log's are above those
    a new cluster hands out (the case a restore must handle)."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE spent (i int)"))
        # Each sub-transaction that writes takes a transaction id of its own.
        conn.execute(
            text(
                "DO $$ BEGIN FOR i IN 1..3000 LOOP BEGIN INSERT INTO spent VALUES (i); "
                "EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$"
            )
        )
    engine.dispose()
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(url)
        .with_migrations(False)
        .with_rate_limit(1e9, 10**9)
        .build()
    )
    try:
        generator = WorkloadGenerator(7, backfill=False, max_task_attempts=3)
        for plan in generator.workflows(workflows):
            execute_plan(svc, plan)
        svc.projections.catch_up(timeout=60)
    finally:
        svc.close()
