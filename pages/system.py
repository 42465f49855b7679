"""System: how this app process is doing — command and query throughput and latency, errors by
category, the query cache, rate-limit refusals, the read replica's lag, the scheduler's jobs, and
the settings in effect (secrets masked)."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from cqrs_core.app import live, ui
from cqrs_core.infra.db import redact
from cqrs_core.ops.webhooks.routes import URL_SETTINGS as WEBHOOK_URL_SETTINGS

ui.require_entry_point()

rt = ui.runtime()
HISTORY = "system.throughput"  # (time, commands total, queries total) samples taken by this page
HISTORY_SECONDS = 300
# Shown through redact(): database URLs (their password) and webhook URLs (their token).
URL_SETTINGS = ("database_url", "read_database_url", *WEBHOOK_URL_SETTINGS)
SECRET_WORDS = ("password", "secret", "token", "api_key")

st.title("System")
st.caption(
    "Numbers from this app process since it started: every command and query it ran, how long they "
    "took, and what went wrong. Other processes (workers, other app servers) keep their own."
)


LATENCY_COLUMNS = {
    c: st.column_config.NumberColumn(format="%.1f") for c in ("p50 (ms)", "p95 (ms)", "p99 (ms)")
}


def throughput(
    taken_at: datetime, commands: int, queries_: int
) -> tuple[float | None, float | None, pd.DataFrame]:
    """Commands/s and queries/s between this refresh and the previous one, and their history
    (kept per session: the chart shows the time this page has been open)."""
    history: deque = st.session_state.setdefault(HISTORY, deque(maxlen=HISTORY_SECONDS))
    now = taken_at.timestamp()
    if history and now - history[-1][0] < 0.5:  # the same snapshot, or one right after it, adds nothing
        now, commands, queries_ = history[-1]
    else:
        history.append((now, commands, queries_))
    rows = []
    for (t0, c0, q0), (t1, c1, q1) in zip(list(history), list(history)[1:], strict=False):
        span = t1 - t0
        if span > 0 and c1 >= c0 and q1 >= q0:  # counters restart with the process
            at = datetime.fromtimestamp(t1, UTC)
            rows += [
                {"time": at, "rate": (c1 - c0) / span, "kind": "commands"},
                {"time": at, "rate": (q1 - q0) / span, "kind": "queries"},
            ]
    latest = rows[-2:] if rows else []
    return (latest[0]["rate"] if latest else None, latest[1]["rate"] if latest else None, pd.DataFrame(rows))


@st.fragment(run_every=live.SYSTEM_SECONDS)
def traffic_card() -> None:
    snapshot = ui.live_board().metrics(ui.live_since())
    card = ui.live_value(snapshot)
    if card is None:
        return
    metrics = card.metrics
    commands, queries_ = card.commands_total, card.queries_total
    command_rate, query_rate, history = throughput(snapshot.taken_at, commands, queries_)
    with ui.wrapping_row():
        st.metric(
            "Commands",
            f"{commands:,}",
            help="Commands this process has executed (including refused ones).",
            border=True,
        )
        st.metric(
            "Commands/s",
            "—" if command_rate is None else f"{command_rate:,.1f}",
            help=f"Over the last refresh interval ({live.SYSTEM_SECONDS} s).",
            border=True,
        )
        st.metric(
            "Queries",
            f"{queries_:,}",
            help="Queries this process has answered (cache hits included).",
            border=True,
        )
        st.metric(
            "Queries/s",
            "—" if query_rate is None else f"{query_rate:,.1f}",
            help=f"Over the last refresh interval ({live.SYSTEM_SECONDS} s).",
            border=True,
        )
        st.metric(
            "Cache hit rate",
            f"{metrics.cache.hit_rate:.0%}",
            help="Share of cacheable queries answered from the query cache.",
            border=True,
        )

    if len(history) >= 4:
        st.vega_lite_chart(history, live.throughput_chart_spec(), key="system.throughput_chart")
    else:
        st.caption(
            "The throughput chart fills in while this page stays open "
            f"(a point every {live.SYSTEM_SECONDS} seconds)."
        )

    st.subheader("Latency")
    if card.commands is None and card.queries is None:
        st.info(
            "Nothing has run in this process yet — create a workflow or start a live load on the Demo page.",
            icon=":material/hourglass_empty:",
        )
    left, right = st.columns(2)
    with left:
        st.markdown("**Commands**")
        if card.commands is not None:
            st.dataframe(
                card.commands,
                placeholder=ui.MISSING,
                hide_index=True,
                key="system.commands",
                column_config=LATENCY_COLUMNS,
                height=ui.table_height(len(card.commands), cap=None),
            )
        else:
            st.caption("No commands yet.")
    with right:
        st.markdown("**Queries**")
        if card.queries is not None:
            st.dataframe(
                card.queries,
                placeholder=ui.MISSING,
                hide_index=True,
                key="system.queries",
                column_config=LATENCY_COLUMNS,
                height=ui.table_height(len(card.queries), cap=None),
            )
        else:
            st.caption("No queries yet.")
    if card.latency_chart is not None:
        st.vega_lite_chart(card.latency_chart.data, card.latency_chart.spec, key="system.latency_chart")

    st.subheader("Errors, cache and rate limiting")
    errors_col, cache_col, limits_col = st.columns(3)
    with errors_col:
        st.markdown("**Errors by category**")
        if card.errors is not None:
            st.dataframe(card.errors, placeholder=ui.MISSING, hide_index=True, key="system.errors")
        else:
            st.caption("No errors since this process started.")
    with cache_col:
        st.markdown("**Query cache**")
        st.dataframe(card.cache, placeholder=ui.MISSING, hide_index=True, key="system.cache")
    with limits_col:
        refusals = sum(metrics.rate_limit_refusals.values())
        st.markdown("**Rate-limit refusals**")
        st.metric(
            "Refused commands",
            f"{refusals:,}",
            border=True,
            help=f"Commands refused because their sender went over "
            f"{rt.settings.rate_limit_per_second:g} commands/s (burst {rt.settings.rate_limit_burst}).",
        )
        if card.refusals is not None:
            st.dataframe(card.refusals, placeholder=ui.MISSING, hide_index=True, key="system.refusals")
    st.caption(f"Updated {ui.clock(snapshot.taken_at)} · every {live.SYSTEM_SECONDS} seconds")


READING_FROM = {
    "replica": "the replica",
    "primary": "the primary (fallback)",
    "nowhere": "nowhere (refused)",
}


@st.fragment(run_every=live.SYSTEM_SECONDS)
def replica_card() -> None:
    st.subheader("Read replica")
    settings = rt.settings
    if rt.service.replica is None:
        st.caption("Queries read from the primary: CQRS_READ_DATABASE_URL is not set.")
        return
    snapshot = ui.live_board().replica(ui.live_since())
    line = ui.live_value(snapshot)
    if line is None:
        return
    lag_bytes, lag_seconds = line.metrics["lag_bytes"], line.metrics["lag_seconds"]
    with ui.wrapping_row():
        st.metric(
            "Behind (bytes)",
            "—" if lag_bytes is None else f"{lag_bytes:,}",
            help="WAL the replica has received from the primary but not replayed yet.",
            border=True,
        )
        st.metric(
            "Behind (seconds)",
            "—" if lag_seconds is None else f"{lag_seconds:,.1f}",
            help="Since the newest transaction the replica has replayed committed on the primary; "
            "0 once it has replayed everything it received.",
            border=True,
        )
        st.metric("Replay", "paused" if line.metrics["replay_paused"] else "running", border=True)
        st.metric("Queries read from", READING_FROM[line.metrics["reading_from"]], border=True)
    show = {"healthy": st.success, "degraded": st.warning, "unhealthy": st.error}[line.status]
    show(f"Read replica: {line.detail}.", icon=":material/database:")
    fallback = "read from the primary" if settings.read_replica_fallback == "primary" else "are refused"
    st.caption(
        f"Measured on the replica {ui.md_escape(redact(settings.read_database_url or ''))}. "
        f"While it is unreachable or more than {settings.read_replica_max_lag_seconds:g} s behind, "
        f"queries {fallback} (CQRS_READ_REPLICA_FALLBACK). Updated {ui.clock(snapshot.taken_at)} · "
        f"every {live.SYSTEM_SECONDS} seconds"
    )


@st.fragment(run_every=live.SCHEDULER_SECONDS)
def scheduler_card() -> None:
    st.subheader("Scheduler")
    settings = rt.settings
    scheduler = rt.scheduler
    if scheduler is None:
        st.info(
            "The projections and their jobs do not run in this app process "
            f"(CQRS_PROJECTIONS_IN={settings.projections_in}); a `cqrs-console worker` runs them"
            + (", started and watched by `cqrs-console serve`" if settings.projections_in == "worker" else "")
            + ". The last runs below are what any process recorded.",
            icon=":material/schedule:",
        )
    elif scheduler.running:
        st.success(
            "The projection runner and the APScheduler jobs run in this process.", icon=":material/schedule:"
        )
    else:
        st.error(
            "The scheduler of this process has stopped; restart the app or run `cqrs-console worker`.",
            icon=":material/error:",
        )
    descriptions = {
        "lag-sampler": "writes a lag sample per projection",
        "view-refresh": "refreshes the statistics views",
        "lag-pruning": f"deletes samples older than {settings.lag_retention_minutes:g} min",
        "rebuilds": "starts requested rebuilds",
        "verification": "replays a sample of streams and compares it with the read models",
    }
    jobs = scheduler.jobs() if scheduler is not None else []
    if jobs:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "Job": j.job_id,
                        "Does": descriptions.get(j.job_id, ""),
                        "Every": f"{j.every_seconds:g} s" if j.every_seconds is not None else "—",
                        "Last run": ui.ago(j.last_run_at) if j.last_run_at else "not yet",
                        "Outcome": j.last_outcome or "—",
                        "Runs": j.runs,
                        "Next run": (
                            f"in {max(0.0, (j.next_run_at - datetime.now(UTC)).total_seconds()):.0f} s"
                            if j.next_run_at
                            else "—"
                        ),
                    }
                    for j in jobs
                ]
            ),
            placeholder=ui.MISSING,
            hide_index=True,
            key="system.jobs",
        )
        st.caption("Recorded by this process's APScheduler as each job runs.")
        return
    traces = ui.live_value(ui.live_board().job_traces(ui.live_since()))
    if traces is None:
        return
    last_sample, last_refresh = traces.last_lag_sample, traces.last_view_refresh
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "Job": "lag-sampler",
                    "Does": descriptions["lag-sampler"],
                    "Last run (any process)": ui.ago(last_sample)
                    if last_sample
                    else "none in the last minute",
                },
                {
                    "Job": "view-refresh",
                    "Does": descriptions["view-refresh"],
                    "Last run (any process)": ui.ago(last_refresh) if last_refresh else "never",
                },
                {
                    "Job": "verification",
                    "Does": descriptions["verification"],
                    "Last run (any process)": ui.ago(traces.last_verification_pass)
                    if traces.last_verification_pass
                    else "never",
                },
            ]
        ),
        placeholder=ui.MISSING,
        hide_index=True,
        key="system.jobs",
    )
    st.caption(
        "The jobs run in another process; their last runs are read from what they leave behind "
        "(the newest lag sample, the newest view refresh, the last verification pass)."
    )


def masked(name: str, value: object) -> str:
    if value is None or value == "":
        return "—"
    if name in URL_SETTINGS:
        return redact(str(value))
    if any(word in name for word in SECRET_WORDS):
        return "••••••"
    return str(value)


def settings_card() -> None:
    st.subheader("Settings in effect")
    settings = rt.settings
    fields = type(settings).model_fields
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "Setting": f"CQRS_{name.upper()}",
                    "Value": masked(name, getattr(settings, name)),
                    "Source": "environment" if name in settings.model_fields_set else "default",
                    "Meaning": info.description or "",
                }
                for name, info in fields.items()
            ]
        ),
        placeholder=ui.MISSING,
        hide_index=True,
        key="system.settings",
        height=ui.table_height(len(fields), cap=None),
        column_config={
            "Setting": st.column_config.TextColumn(width=280),
            "Value": st.column_config.TextColumn(width=240),
            "Source": st.column_config.TextColumn(width=100),
            "Meaning": st.column_config.TextColumn(width="large"),
        },
    )
    st.caption(
        f"Connected to {ui.md_escape(rt.connection_label)}. Passwords in database URLs are never shown."
    )


ui.refresh_live()
traffic_card()
replica_card()
scheduler_card()
settings_card()
