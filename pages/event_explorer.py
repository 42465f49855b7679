"""Event explorer: the global event log, newest first, with filters and keyset paging; the JSON of
one event as stored and as this code reads it (upcast and validated); the correlation trace of a
command — the events it caused and what each projection did with each of them; and the schema
lab — stored events by type and schema version, and a dry run of the whole log through today's
upcasters and validators."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.domain.events import EVENT_TYPES, REGISTRY, STREAM_PREFIX
from cqrs_core.infra.errors import CorruptStreamError, CQRSError
from cqrs_core.ops import schema_check
from cqrs_core.read.queries import QueryFactory

ui.require_entry_point()

queries = QueryFactory()
PAGE_SIZES = (25, 50, 100, 200)
WINDOWS: dict[str, int | None] = {
    "Any time": None,
    "Last 15 minutes": 15,
    "Last hour": 60,
    "Last 24 hours": 24 * 60,
    "Between dates": None,
}
CURSOR = "explorer.cursor"  # None (newest page) | ("before", position) | ("after", position)
FILTERS = "explorer.filters"  # the filters the cursor belongs to
TRACE = "explorer.trace_id"

st.title("Event explorer")
st.caption(
    "Every event ever recorded, newest first. The log is append-only: it is the source of truth "
    "every read model is built from."
)


# ---------------------------------------------------------------- filters


def stream_filter(value: str) -> str | None:
    """A stream id; a bare workflow id is accepted too (its stream is `workflow-<id>`)."""
    value = value.strip()
    if not value:
        return None
    try:
        return f"{STREAM_PREFIX}{uuid.UUID(value)}"
    except ValueError:
        return value


def filters_card() -> dict[str, Any]:
    """The filter widgets; returns the query parameters they ask for."""
    with st.container(border=True):
        types_col, stream_col = st.columns(2)
        types = types_col.multiselect(
            "Event types", sorted(EVENT_TYPES), key="explorer.types", placeholder="All event types"
        )
        stream = stream_col.text_input(
            "Stream or workflow id", key="explorer.stream", placeholder="workflow-… or a workflow id"
        )
        corr_col, window_col, size_col = st.columns([2, 2, 1])
        correlation = corr_col.text_input(
            "Correlation id", key="explorer.correlation", placeholder="e.g. from a command result"
        )
        window = window_col.selectbox("Recorded", list(WINDOWS), key="explorer.window")
        page_size = size_col.selectbox("Per page", PAGE_SIZES, index=1, key="explorer.page_size")
        recorded_from = recorded_to = None
        dates: Any = ()
        if window == "Between dates":
            zone_name = ui.viewer_zone_name()
            zone = ZoneInfo(zone_name)
            today = datetime.now(zone).date()
            dates = st.date_input(
                f"Between ({zone_name}, inclusive)",
                value=(today - timedelta(days=7), today),
                min_value=date(2000, 1, 1),
                max_value=today + timedelta(days=1),
                key="explorer.dates",
            )
            if isinstance(dates, tuple | list) and len(dates) == 2:
                recorded_from = datetime.combine(dates[0], time.min, zone)
                recorded_to = datetime.combine(dates[1], time.max, zone)
            elif isinstance(dates, tuple | list) and len(dates) == 1 or isinstance(dates, date):
                start = dates[0] if isinstance(dates, tuple | list) else dates
                recorded_from = datetime.combine(start, time.min, zone)
        elif WINDOWS[window]:
            recorded_from = datetime.now(UTC) - timedelta(minutes=WINDOWS[window])
    # The paging cursor belongs to these filters; a moving "last 15 minutes" is the same filter.
    signature = (tuple(types), stream.strip(), correlation.strip(), window, str(dates), page_size)
    if st.session_state.get(FILTERS) != signature:
        st.session_state[FILTERS] = signature
        st.session_state[CURSOR] = None
    return {
        "event_types": types or None,
        "stream_id": stream_filter(stream),
        "correlation_id": correlation.strip() or None,
        "recorded_from": recorded_from,
        "recorded_to": recorded_to,
        "limit": page_size,
    }


# ---------------------------------------------------------------- the log


def go(cursor: tuple[str, int] | None) -> None:
    st.session_state[CURSOR] = cursor


def read_page(params: dict[str, Any]):
    """The events on the current page (newest first), and whether there are newer / older ones.
    The newest page is pinned once shown (a cursor just above its top event), so events that
    arrive meanwhile do not shift the page under a person's click; Newer shows them."""
    cursor = st.session_state.get(CURSOR)
    if cursor is not None and cursor[0] == "after":
        page = ui.run_query(ui.build(queries.get_event_log, after=cursor[1], **params))
        if page is None:
            return None
        if page.next_after is not None:
            return list(reversed(page.events)), True, True
        cursor = None  # reached the newest events: show a full newest page
    # The newest page is read fresh (a cached one may miss what just arrived); pages below a
    # cursor hardly ever change, so the short-lived query cache may serve them.
    page = ui.run_query(
        ui.build(queries.get_event_log, before=cursor[1] if cursor else None, **params),
        cache=cursor is not None,
    )
    if page is None:
        return None
    events = page.events
    if cursor is None and events:
        st.session_state[CURSOR] = ("before", events[0]["position"] + 1)
    if not events:
        return events, False, False
    newer = ui.run_query(
        ui.build(queries.get_event_log, after=events[0]["position"], **(params | {"limit": 1})), cache=False
    )
    return events, bool(newer and newer.events), page.next_before is not None


def select_row(positions: list[int]) -> None:
    rows = st.session_state["explorer.table"].selection.rows
    if rows:
        st.session_state["explorer.event"] = positions[rows[0]]


def trace(correlation_id: Any) -> None:
    st.session_state[TRACE] = str(correlation_id)


def only_stream(stream_id: str) -> None:
    st.session_state["explorer.stream"] = stream_id


def plain(value: Any) -> Any:
    """JSON-ready: UUIDs and times as text."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


# The log table's columns, in order. What a person reads an event by comes first, each with a
# fixed width, so that it is on screen at 1024 px (ui.KEY_COLUMNS_WIDTH_BUDGET); the rest follow
# and, at 1440 px, fit too (Event type ran off-screen).
LOG_KEY_COLUMNS = ["Position", "Recorded", "Event type", "Stream"]
LOG_COLUMNS = [*LOG_KEY_COLUMNS, "Version", "Actor", "Correlation id"]
LOG_COLUMN_CONFIG = {
    "Position": st.column_config.NumberColumn(format="%d", width=75),
    "Recorded": ui.datetime_column("Recorded", "YYYY-MM-DD HH:mm:ss.SSS", width=175),
    "Event type": st.column_config.TextColumn(width=165),
    "Stream": st.column_config.TextColumn(width=140),
    "Version": st.column_config.NumberColumn(format="%d", width=65),
    "Actor": st.column_config.TextColumn(width=90),
    "Correlation id": st.column_config.TextColumn(width=280),
}


def log_card(params: dict[str, Any]) -> None:
    result = read_page(params)
    if result is None:
        return
    events, has_newer, has_older = result
    if not events:
        if any(v for k, v in params.items() if k != "limit"):
            st.info(
                "No events match these filters; widen them or clear them.", icon=":material/filter_alt_off:"
            )
        else:
            st.info(
                "The log is empty — create a workflow, or seed demo data on the Demo page.",
                icon=":material/inbox:",
            )
        return

    newest, span, older = st.columns([1, 3, 1], vertical_alignment="center")
    newest.button(
        "Newer",
        key="explorer.newer",
        icon=":material/arrow_back:",
        disabled=not has_newer,
        on_click=go,
        args=(("after", events[0]["position"]),),
        width="stretch",
    )
    span.markdown(
        f"<div style='text-align:center'>Positions {events[0]['position']:,} – "
        f"{events[-1]['position']:,} · {len(events)} events</div>",
        unsafe_allow_html=True,
    )
    older.button(
        "Older",
        key="explorer.older",
        icon=":material/arrow_forward:",
        icon_position="right",
        disabled=not has_older,
        on_click=go,
        args=(("before", events[-1]["position"]),),
        width="stretch",
    )

    positions = [e["position"] for e in events]
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "Position": e["position"],
                    "Recorded": e["recorded_at"],
                    "Event type": e["event_type"],
                    "Stream": e["stream_id"],
                    "Version": e["version"],
                    "Actor": e["actor"],
                    "Correlation id": str(e["correlation_id"] or ""),
                }
                for e in events
            ]
        ),
        placeholder=ui.MISSING,
        hide_index=True,
        key="explorer.table",
        on_select=lambda: select_row(positions),
        selection_mode="single-row",
        column_order=LOG_COLUMNS,
        column_config=LOG_COLUMN_CONFIG,
    )
    st.caption("Click a row (or choose below) to see the event's JSON.")

    by_position = {e["position"]: e for e in events}
    if st.session_state.get("explorer.event") not in by_position:
        st.session_state["explorer.event"] = positions[0]
    chosen = st.selectbox(
        "Event",
        positions,
        key="explorer.event",
        format_func=lambda p: f"#{p:,} · {by_position[p]['event_type']} · {by_position[p]['stream_id']}",
    )
    event = by_position[chosen]
    # The actions on a row of their own above the JSON, each as wide as its label; beside the
    # JSON, in a quarter of the width, they were cut to "Trace its co…" at 1024 px.
    with ui.wrapping_row():
        if event["correlation_id"]:
            st.button(
                "Trace its correlation",
                key="explorer.trace_event",
                icon=":material/timeline:",
                on_click=trace,
                args=(event["correlation_id"],),
                help="Show the command that caused it, its sibling events and the projections that applied them.",
            )
        st.button(
            "Show this stream only",
            key="explorer.only_stream",
            icon=":material/filter_alt:",
            on_click=only_stream,
            args=(event["stream_id"],),
        )
    st.json(plain(event), expanded=2)
    upcast_view(event)


# ---------------------------------------------------------------- correlation trace


# How each outcome of an event at a projection is drawn: edge style, colour, and label.
OUTCOME_EDGES = {
    "applied": ("solid", "#2E7D4F", ""),
    "skipped": ("dotted", "#9E9E9E", "skipped"),
    "parked": ("dashed", "#B3261E", "parked"),
    "discarded": ("dashed", "#6D1B16", "discarded"),
    "not yet": ("dotted", "#9E9E9E", "not yet"),
}
OUTCOME_HELP = (
    "What each projection did with the event: applied it; skipped it (it does not handle that "
    "event type); parked it (it failed on it, see the Projections page); discarded it (an operator "
    "gave up on it after it was parked); or not yet (its checkpoint has not reached the event)."
)
GRAPH_EVENTS = 40


def trace_graph(commands: list[dict], events: list[dict], projections: list[str]) -> str:
    lines = [
        "digraph trace {",
        "rankdir=LR;",
        'node [shape=box, style="rounded,filled", fontname="sans-serif", '
        'fontsize=11, fillcolor="#F3F0FA", color="#6A5ACD"];',
    ]
    for c in commands:
        lines.append(
            f'"c{c["command_id"]}" [label="{ui.dot_label(c["command_type"])}\\n{ui.dot_label(c["actor"])}", '
            'fillcolor="#E3F2FD", color="#1565C0"];'
        )
    if not commands:
        lines.append(
            '"direct" [label="no command\\n(appended directly)", fillcolor="#FFF3E0", color="#B26A00"];'
        )
    for e in events[:GRAPH_EVENTS]:
        lines.append(f'"e{e["position"]}" [label="#{e["position"]} {ui.dot_label(e["event_type"])}"];')
        source = (
            f"c{e['command_id']}"
            if e.get("command_id") and any(str(c["command_id"]) == str(e["command_id"]) for c in commands)
            else "direct"
        )
        if source == "direct" and commands:
            source = f"c{commands[0]['command_id']}"
        lines.append(f'"{source}" -> "e{e["position"]}";')
    for p in projections:
        lines.append(
            f'"p{ui.dot_label(p)}" [label="{ui.dot_label(p)}", fillcolor="#E8F5E9", color="#2E7D4F"];'
        )
    for e in events[:GRAPH_EVENTS]:
        for p in projections:
            style, colour, label = OUTCOME_EDGES[e["outcomes"].get(p, "not yet")]
            attributes = f'style={style}, color="{colour}"'
            if label:
                attributes += f', fontcolor="{colour}", label="{ui.dot_label(label)}", fontsize=9'
            lines.append(f'"e{e["position"]}" -> "p{ui.dot_label(p)}" [{attributes}];')
    lines.append("}")
    return "\n".join(lines)


def trace_card() -> None:
    st.subheader("Correlation trace")
    st.caption(
        "A correlation id follows a command into every event it causes. The trace shows the command, "
        "its events, and what each projection did with each one."
    )
    value = st.text_input(
        "Correlation id", key=TRACE, placeholder="paste one, or use Trace its correlation above"
    )
    if not value.strip():
        st.info(
            "Choose an event above and press Trace its correlation, or paste a correlation id.",
            icon=":material/timeline:",
        )
        return
    found = ui.run_query(ui.build(queries.get_correlation_trace, value.strip()), cache=False)
    if found is None:
        return
    done = sum(1 for e in found.events if set(e["outcomes"].values()) <= {"applied", "skipped"})
    troubled = sum(1 for e in found.events if {"parked", "discarded"} & set(e["outcomes"].values()))
    with ui.wrapping_row():
        st.metric("Commands", len(found.commands), border=True)
        st.metric("Events", len(found.events), border=True)
        st.metric(
            "Done by every projection",
            f"{done} of {len(found.events)}",
            border=True,
            help="Events every projection applied, or skipped because it does not handle their type.",
        )
        st.metric(
            "Parked or discarded",
            troubled,
            border=True,
            help="Events at least one projection failed on: parked now, or parked and then discarded.",
        )
    st.graphviz_chart(trace_graph(found.commands, found.events, found.projections))
    if len(found.events) > GRAPH_EVENTS:
        st.caption(f"The graph shows the first {GRAPH_EVENTS} events; the table below has all of them.")
    if found.commands:
        st.markdown("**Command**")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "Command": c["command_type"],
                        "Actor": c["actor"],
                        "Workflow": c["aggregate_id"],
                        "Recorded": c["recorded_at"],
                        "Took (ms)": float(c["duration_ms"]) if c["duration_ms"] else None,
                        "Command id": str(c["command_id"]),
                    }
                    for c in found.commands
                ]
            ),
            placeholder=ui.MISSING,
            hide_index=True,
            key="trace.commands",
            column_config={
                "Recorded": ui.datetime_column("Recorded", "YYYY-MM-DD HH:mm:ss.SSS"),
                "Took (ms)": st.column_config.NumberColumn(format="%.1f"),
            },
        )
    else:
        st.caption(
            "No command recorded this correlation id: its events were appended directly to the store "
            "(for example a demo fault injection)."
        )
    st.markdown("**Events and what each projection did with them**")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "Position": e["position"],
                    "Event type": e["event_type"],
                    **{p: e["outcomes"].get(p, "not yet") for p in found.projections},
                    "Stream": e["stream_id"],
                    "Version": e["version"],
                    "Reads as": e.get("reads_as", ""),
                    "Recorded": e["recorded_at"],
                }
                for e in found.events
            ],
            columns=[
                "Position",
                "Event type",
                *found.projections,
                "Stream",
                "Version",
                "Reads as",
                "Recorded",
            ],
        ),
        placeholder=ui.MISSING,
        hide_index=True,
        key="trace.events",
        column_config={
            "Recorded": ui.datetime_column("Recorded", "YYYY-MM-DD HH:mm:ss.SSS"),
            "Position": st.column_config.NumberColumn(format="%d"),
            **{p: st.column_config.TextColumn(p, help=OUTCOME_HELP) for p in found.projections},
        },
    )


# ---------------------------------------------------------------- stored and upcast forms, schema lab


def upcast_view(event: dict[str, Any]) -> None:
    """The selected event as this code reads it: upcast from its stored schema version and
    validated (what the aggregate and every projection see), or why it cannot be read."""
    try:
        up = REGISTRY.upcast(
            event["event_type"],
            event["schema_version"],
            event["payload"],
            stream_id=event["stream_id"],
            version=event["version"],
        )
        typed = REGISTRY.decode(up.event_type, up.payload, up.schema_version)
    except CorruptStreamError as exc:
        st.warning(
            ui.md_escape(
                f"This code cannot read this event: {exc.context.get('problem') or exc.user_message}"
            ),
            icon=":material/report:",
        )
        return
    steps = " → ".join(s.name for s in up.steps)
    st.caption(
        ui.md_escape(
            f"As this code reads it: {up.event_type} v{up.schema_version}"
            + (f" (upcast: {steps})" if steps else " (stored at the current version, read as stored)")
        )
    )
    st.json(
        {"event_type": up.event_type, "schema_version": up.schema_version, "payload": typed.to_payload()},
        expanded=2,
    )


@st.cache_data(ttl=30, show_spinner=False)
def stored_census(_engine: Any, database: str) -> list[schema_check.CensusRow]:
    """Stored events by type and schema version (one GROUP BY over the log; kept 30 s)."""
    return schema_check.census(_engine)


def chart_text(value: Any, limit: int = 60) -> str:
    """Stored text (a type name could be anything) for a Vega-Lite label or tooltip: printable
    characters only, cut to `limit`. Vega-Lite draws labels as text (no markup) and its tooltips
    escape HTML, so nothing in it takes effect; this keeps a line a line."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return s if len(s) <= limit else s[: limit - 1] + "…"


HEATMAP_SPEC: dict[str, Any] = {
    "height": {"step": 26},
    "encoding": {
        "x": {"field": "Schema version", "type": "ordinal", "sort": "ascending", "axis": {"labelAngle": 0}},
        "y": {"field": "Event type", "type": "nominal", "sort": "ascending"},
    },
    "layer": [
        {
            "mark": {"type": "rect", "tooltip": True},
            "encoding": {
                "color": {
                    "field": "Events",
                    "type": "quantitative",
                    "scale": {"type": "log", "scheme": "purples"},
                    "legend": None,
                },
                "tooltip": [
                    {"field": "Event type"},
                    {"field": "Schema version"},
                    {"field": "Events", "format": ","},
                    {"field": "Read as"},
                ],
            },
        },
        {
            "mark": {"type": "text", "fontSize": 11},
            "encoding": {
                "text": {"field": "Events", "format": ","},
                "color": {"condition": {"test": "datum['Share'] > 0.5", "value": "white"}, "value": "black"},
            },
        },
    ],
}


def schema_lab_card() -> None:
    st.subheader("Schema lab")
    st.caption(
        "Stored events by type and schema version. An older version is upcast as it is read (the log is "
        "never rewritten); a type or version this code cannot read is listed as such."
    )
    engine = ui.service().engine
    try:
        census = stored_census(engine, str(engine.url.database))
    except CQRSError as exc:
        ui.show_error(exc)
        return
    if not census:
        st.info("The log is empty: there is nothing to check yet.", icon=":material/inbox:")
        return
    most = max(r.count for r in census)
    cells = pd.DataFrame(
        [
            {
                "Event type": chart_text(r.event_type),
                "Schema version": f"v{r.schema_version}",
                "Events": r.count,
                "Share": r.count / most,
                "Read as": chart_text(r.reading),
            }
            for r in census
        ]
    )
    st.vega_lite_chart(cells, HEATMAP_SPEC, key="schema.heatmap", width="stretch")
    st.dataframe(
        cells.drop(columns=["Share"]),
        placeholder=ui.MISSING,
        hide_index=True,
        key="schema.census",
        column_config={"Events": st.column_config.NumberColumn(format="%d")},
    )
    if not ui.can("operator"):
        st.caption("Operators can dry-run the whole log through this code's upcasters and validators here.")
        return
    if st.button(
        "Dry-run the whole log",
        key="schema.dry_run",
        icon=":material/science:",
        help="Reads every stored event through the current upcasters, validators and the workflow's fold, "
        "in a read-only transaction: nothing is written. The same check as `cqrs-console schema check`.",
    ):
        with st.spinner("Reading the whole log…"):
            try:
                st.session_state["schema.report"] = schema_check.dry_run(engine)
            except CQRSError as exc:
                ui.show_error(exc)
                return
    report: schema_check.SchemaReport | None = st.session_state.get("schema.report")
    if report is not None:
        dry_run_report(report)


def dry_run_report(report: schema_check.SchemaReport) -> None:
    a, b, c = st.columns(3)
    a.metric("Events read", f"{report.events:,}", border=True)
    b.metric("Streams", f"{report.streams:,}", border=True)
    c.metric("Would fail", f"{report.failed:,}", border=True)
    if report.ok:
        st.success(
            f"Every stored event reads with this code ({report.seconds:.1f} s).", icon=":material/check:"
        )
    else:
        st.error(
            f"{report.failed:,} stored events would not read with this code; fix them (or add the upcaster) "
            "before deploying.",
            icon=":material/error:",
        )
    versions, upcasters = st.columns(2)
    versions.dataframe(
        pd.DataFrame(
            [
                {"Event type": t, "Schema version": f"v{v}", "Events": n, "Read as": REGISTRY.reading(t, v)}
                for (t, v), n in sorted(report.versions.items())
            ]
        ),
        hide_index=True,
        key="schema.versions",
    )
    names = sorted({s.name for s in REGISTRY.steps.values()} | set(report.upcasters))
    upcasters.dataframe(
        pd.DataFrame([{"Upcaster": n, "Events touched": report.upcasters.get(n, 0)} for n in names]),
        hide_index=True,
        key="schema.upcasters",
    )
    if report.failures:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "Position": f.position,
                        "Stream": f.stream_id,
                        "Version": f.version,
                        "Stored type": f.event_type,
                        "Schema version": f.schema_version,
                        "Problem": f.message,
                    }
                    for f in report.failures
                ]
            ),
            placeholder=ui.MISSING,
            hide_index=True,
            key="schema.failures",
            column_config={"Position": st.column_config.NumberColumn(format="%d")},
        )
        if report.failed > len(report.failures):
            st.caption(
                f"… and {report.failed - len(report.failures):,} more (`cqrs-console schema check` lists them)."
            )


params = filters_card()
log_card(params)
trace_card()
schema_lab_card()
