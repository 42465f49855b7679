"""Refreshing the statistics materialized views and recording when and how long it took."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text

from cqrs_core.projections.engine.locks import JOB_NAMESPACE
from cqrs_core.read.tables import MATERIALIZED_VIEWS

log = logging.getLogger(__name__)

_VIEW_LOCK_BASE = 100  # JOB_NAMESPACE keys 100.. : one per view


@dataclass(frozen=True)
class ViewRefresh:
    view_name: str
    refreshed_at: datetime | None
    duration_ms: float | None
    row_count: int | None


def refresh_views(engine: Engine, min_age: float | None = None) -> list[ViewRefresh]:
    """REFRESH ... CONCURRENTLY each view (readers keep the old contents until it commits).
    A view another process is refreshing right now, or (with `min_age`) one refreshed less than
    `min_age` seconds ago, is left alone. Returns the refreshes done."""
    done = []
    for i, view in enumerate(MATERIALIZED_VIEWS):
        with engine.begin() as conn:
            taken = conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:ns, :k)"),
                {"ns": JOB_NAMESPACE, "k": _VIEW_LOCK_BASE + i},
            ).scalar_one()
            if not taken:
                continue
            if min_age:
                recent = conn.execute(
                    text(
                        "SELECT refreshed_at > clock_timestamp() - make_interval(secs => :s)"
                        " FROM view_refreshes WHERE view_name = :v"
                    ),
                    {"s": min_age, "v": view},
                ).scalar()
                if recent:
                    continue
            started = time.perf_counter()
            if conn.execute(
                text("SELECT to_regprocedure('public.cqrs_refresh_view(text, boolean)') IS NOT NULL")
            ).scalar():
                # The SECURITY DEFINER wrapper (migrations 0003, 0005): REFRESH needs the view's owner,
                # and the projections run as the least-privileged runtime role.
                conn.execute(text("SELECT public.cqrs_refresh_view(:v)"), {"v": view})
            else:
                conn.exec_driver_sql(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
            duration_ms = (time.perf_counter() - started) * 1000
            rows = conn.exec_driver_sql(f"SELECT count(*) FROM {view}").scalar_one()
            refreshed_at = conn.execute(
                text(
                    """
                    INSERT INTO view_refreshes (view_name, refreshed_at, duration_ms, row_count)
                    VALUES (:v, clock_timestamp(), :d, :n)
                    ON CONFLICT (view_name) DO UPDATE
                       SET refreshed_at = EXCLUDED.refreshed_at, duration_ms = EXCLUDED.duration_ms,
                           row_count = EXCLUDED.row_count
                    RETURNING refreshed_at
                    """
                ),
                {"v": view, "d": duration_ms, "n": rows},
            ).scalar_one()
        log.debug("refreshed %s in %.0f ms (%d rows)", view, duration_ms, rows)
        done.append(ViewRefresh(view, refreshed_at, duration_ms, int(rows)))
    return done


def view_freshness(engine: Engine) -> list[ViewRefresh]:
    """When each view was last refreshed (None for a view never refreshed)."""
    with engine.connect() as conn:
        rows = {
            r.view_name: r
            for r in conn.execute(
                text("SELECT view_name, refreshed_at, duration_ms, row_count FROM view_refreshes")
            )
        }
    out = []
    for view in MATERIALIZED_VIEWS:
        r = rows.get(view)
        out.append(
            ViewRefresh(view, r.refreshed_at, r.duration_ms, r.row_count)
            if r
            else ViewRefresh(view, None, None, None)
        )
    return out
