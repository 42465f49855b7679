"""`cqrs-console bench-pages`: how long each dashboard page takes to run with a large read side.

The read models are filled in SQL with `--workflows` rows (plus six tasks and four activity
rows each) so 100,000 workflows take seconds instead of the hours the command path would; the
command path has its own figures in `cqrs-console bench`. Each page is then run with Streamlit's
AppTest (script execution including every query, not browser rendering), cold (query cache
cleared before each run) and warm."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cqrs_core.domain.vocabulary import (
    METHODOLOGIES,
    PRIORITIES,
    TASK_KINDS,
    TASK_STATUSES,
    WORKFLOW_STATUSES,
)
from cqrs_core.infra.db import migrate
from cqrs_core.tools.bench.harness import scratch_database

APP = Path(__file__).resolve().parents[2] / "app.py"
PAGES = [
    "pages/overview.py",
    "pages/workflows.py",
    "pages/statistics.py",
    "pages/projections.py",
    "pages/event_explorer.py",
    "pages/system.py",
    "pages/new_workflow.py",
    "pages/demo.py",
]

# The domain's words for the fill, bound as arrays: the SQL picks from them by position (the six
# methodologies, statuses and task kinds, the four priorities with their rank, and the first four
# task statuses: none cancelled).
FILL_WORDS = {
    "methodologies": list(METHODOLOGIES),
    "workflow_statuses": list(WORKFLOW_STATUSES),
    "priorities": list(PRIORITIES),
    "task_kinds": list(TASK_KINDS),
    "task_statuses": list(TASK_STATUSES[:4]),
}
FILL_SQL = [
    """INSERT INTO workflow_summary (workflow_id, title, research_question, methodology, status, priority,
           priority_rank, owner, tags, created_at, started_at, finished_at, duration_seconds, task_total,
           task_completed, task_running, task_pending, progress_pct, last_activity_at, version)
       SELECT md5('wf' || i)::uuid,
              (ARRAY['Sleep and memory', 'Graph neural networks', 'Microplastics in rivers',
                     'Remote work and output', 'Gut flora and mood'])[1 + i % 5] || ' study ' || i,
              'What is the effect of ' || (ARRAY['sleep', 'graphs', 'plastics', 'remote work', 'diet'])[1 + i % 5]
                  || ' on outcome ' || (i % 97) || '?',
              (CAST(:methodologies AS text[]))[1 + i % 6],
              (CAST(:workflow_statuses AS text[]))[1 + (i * 7) % 6],
              (CAST(:priorities AS text[]))[1 + (i * 3) % 4], (i * 3) % 4,
              (ARRAY['alice', 'bob', 'carol', 'dan'])[1 + i % 4],
              CASE WHEN i % 3 = 0 THEN ARRAY['ai', 'health'] ELSE ARRAY['ai'] END,
              now() - (i % 365) * interval '1 day', now() - (i % 360) * interval '1 day',
              CASE WHEN i % 2 = 0 THEN now() - (i % 300) * interval '1 day' END,
              CASE WHEN i % 2 = 0 THEN (i % 5000) * 60.0 END, 6, i % 7 % 6, 1, 0, 50, now(), 10
       FROM generate_series(1, :n) AS i""",
    """INSERT INTO task_summary (workflow_id, task_id, name, kind, assignee, status, attempts, created_at,
           duration_seconds)
       SELECT md5('wf' || i)::uuid, md5('t' || i || '-' || k)::uuid, 'Task ' || k,
              (CAST(:task_kinds AS text[]))[k],
              (ARRAY['lit-bot', 'alice', 'bob', 'carol', 'stats-agent'])[1 + (i + k) % 5],
              (CAST(:task_statuses AS text[]))[1 + (i + k) % 4], 1 + (i + k) % 3,
              now() - (i % 365) * interval '1 day', ((i * k) % 900) * 60.0
       FROM generate_series(1, :n) AS i, generate_series(1, 6) AS k""",
    """INSERT INTO workflow_activity (position, workflow_id, event_type, actor, occurred_at, summary)
       SELECT i * 4 + k, md5('wf' || i)::uuid, 'TaskStarted', 'alice', now() - (i % 365) * interval '1 day',
              'alice started a task'
       FROM generate_series(1, :n) AS i, generate_series(0, 3) AS k""",
]


PageTimes = dict[str, str | float]  # page, cold/warm p50 and max in ms, and the error if it raised


def time_pages(workflows: int, runs: int, url: str | None, say: Callable[[str], None]) -> list[PageTimes]:
    """Fill a scratch database (a temporary embedded server, or one on `url`'s server) with
    `workflows` workflows and time every page `runs` times cold and warm. `say` gets the progress."""
    from streamlit.testing.v1 import AppTest

    results = []
    with scratch_database(url, say) as (db_url, _where):
        migrate(db_url)
        engine = create_engine(db_url, poolclass=NullPool)
        with engine.begin() as conn:
            for sql in FILL_SQL:
                conn.execute(text(sql), {"n": workflows, **FILL_WORDS})
        with engine.begin() as conn:
            for view in (
                "stats_daily_throughput",
                "stats_methodology_outcomes",
                "stats_task_kind",
                "stats_assignee_load",
            ):
                conn.exec_driver_sql(f"REFRESH MATERIALIZED VIEW {view}")
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
        os.environ.update(CQRS_DATABASE_URL=db_url, CQRS_RUN_PROJECTIONS="false")
        from cqrs_core.infra.config import get_settings

        get_settings.cache_clear()
        for page in PAGES:
            at = AppTest.from_file(str(APP), default_timeout=60)
            at.run()
            at.switch_page(page)
            at.run()  # first run opens the page's widgets; not timed
            row: PageTimes = {"page": page.removeprefix("pages/").removesuffix(".py")}
            for mode in ("cold", "warm"):
                times = []
                for _ in range(runs):
                    if mode == "cold":
                        at.session_state["runtime"].service.query_bus.cache.clear()
                    t0 = time.perf_counter()
                    at.run()
                    times.append((time.perf_counter() - t0) * 1000)
                    if at.exception:
                        row["error"] = str(at.exception[0].value)[:200]
                row[f"{mode}_p50_ms"] = round(statistics.median(times), 1)
                row[f"{mode}_max_ms"] = round(max(times), 1)
            results.append(row)
        import streamlit as st

        st.cache_resource.clear()
    return results


def format_page_times(results: list[PageTimes], workflows: int) -> str:
    """The timings as a plain-text table, one page a line; a page that raised shows its error."""
    lines = [
        f"{'page':<16}{'cold p50':>10}{'cold max':>10}{'warm p50':>10}{'warm max':>10}   ({workflows:,} workflows)"
    ]
    for r in results:
        lines.append(
            f"{r['page']:<16}{r['cold_p50_ms']:>8.0f}ms{r['cold_max_ms']:>8.0f}ms{r['warm_p50_ms']:>8.0f}ms"
            f"{r['warm_max_ms']:>8.0f}ms" + (f"  ERROR {r['error']}" if "error" in r else "")
        )
    return "\n".join(lines)
