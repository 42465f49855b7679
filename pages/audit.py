"""Audit: every operator and admin action — pause, resume, rebuild, retry/discard parked, refresh
views, demo seed, live load start/stop, reset, poison — with who, when, the parameters and the
outcome (accepted, or refused and why), newest first, filtered and paged, with a CSV export."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.read.queries import MAX_PAGE_SIZE, QueryFactory
from cqrs_core.read.results import AuditPage

ui.require_entry_point()

queries = QueryFactory()
PAGE_SIZE = 50
EXPORT_LIMIT = 10_000  # rows in one CSV export
ALL = "Everyone"
WINDOWS: dict[str, timedelta | None] = {
    "Any time": None,
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(days=1),
    "Last 7 days": timedelta(days=7),
}
OUTCOMES = {"Any outcome": None, "Accepted": "accepted", "Refused": "refused"}
CURSORS = "audit.cursors"  # the `before` of each page shown so far (None: the newest page)
FILTERS = "audit.filters"  # the filters the cursors belong to
COLUMNS = ["When", "Who", "Role", "Action", "Parameters", "Outcome", "Detail"]

st.title("Audit")
st.caption(
    "Every operator and admin action, newest first: who asked, when, with what parameters, and "
    "whether it was accepted or refused (and why). A reset empties the event log, not this timeline."
)


def rows(entries: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "When": ui.when(e["at"]),
                "Who": e["actor"],
                "Role": e["role"],
                "Action": e["action"],
                "Parameters": json.dumps(e["parameters"], ensure_ascii=False, sort_keys=True)
                if e["parameters"]
                else "",
                "Outcome": e["outcome"],
                "Detail": e["detail"] or "",
            }
            for e in entries
        ],
        columns=COLUMNS,
    )


def export(service: Any, filters: dict[str, Any]) -> bytes:
    """Every entry the filters select (up to EXPORT_LIMIT), as CSV with formulas neutralised.
    Runs when the file is fetched, outside the page's run: `service` is taken at render time."""
    entries: list[dict[str, Any]] = []
    before = None
    while len(entries) < EXPORT_LIMIT:
        page: AuditPage = service.execute_query(
            queries.get_audit_trail(**filters, before=before, limit=MAX_PAGE_SIZE), cache=False
        )
        entries.extend(page.entries)
        before = page.next_before
        if before is None:
            break
    return ui.dataframe_csv(rows(entries[:EXPORT_LIMIT]))


def filters_card(known: AuditPage | None) -> dict[str, Any]:
    actors = known.actors if known is not None else []
    actions = known.actions if known is not None else []
    with st.container(border=True, horizontal=True, gap="small"):
        actor = st.selectbox("Who", [ALL, *actors], key="audit.actor", width=220)
        chosen = st.multiselect("Action", actions, key="audit.actions", placeholder="Any action", width=320)
        outcome = st.selectbox("Outcome", list(OUTCOMES), key="audit.outcome", width=160)
        window = st.selectbox("When", list(WINDOWS), key="audit.window", width=160)
    filters: dict[str, Any] = {
        "actor": None if actor in (None, ALL) else actor,
        "actions": list(chosen) or None,
        "outcome": OUTCOMES[outcome or "Any outcome"],
    }
    span = WINDOWS[window or "Any time"]
    if span is not None:
        filters["at_from"] = datetime.now(UTC) - span
    return filters


def current_filters_key(filters: dict[str, Any]) -> tuple:
    # The window's start moves with the clock: key on the window's name, not its instant.
    return (
        filters["actor"],
        tuple(filters["actions"] or ()),
        filters["outcome"],
        st.session_state.get("audit.window"),
    )


# The actors and actions recorded so far, for the filters' choices.
known = ui.run_query(queries.get_audit_trail(limit=1))
filters = filters_card(known)
if st.session_state.get(FILTERS) != current_filters_key(filters):
    st.session_state[FILTERS] = current_filters_key(filters)
    st.session_state[CURSORS] = [None]
cursors: list[int | None] = st.session_state[CURSORS]

page = ui.run_query(queries.get_audit_trail(**filters, before=cursors[-1], limit=PAGE_SIZE))
if page is not None:
    if not page.entries:
        st.info("No action matches these filters.", icon=":material/search_off:")
    else:
        st.dataframe(rows(page.entries), placeholder=ui.MISSING, hide_index=True, key="audit.table")
    nav = st.container(horizontal=True, vertical_alignment="center")
    if nav.button("Newest", key="audit.newest", icon=":material/first_page:", disabled=len(cursors) == 1):
        st.session_state[CURSORS] = [None]
        st.rerun()
    if nav.button(
        "Older", key="audit.older", icon=":material/navigate_next:", disabled=page.next_before is None
    ):
        st.session_state[CURSORS] = [*cursors, page.next_before]
        st.rerun()
    nav.caption(f"Page {len(cursors)} · {PAGE_SIZE} entries a page")
    nav.space("stretch")
    nav.download_button(
        "Export CSV",
        lambda service=ui.service(): export(service, filters),
        file_name="audit.csv",
        mime="text/csv",
        icon=":material/download:",
        key="audit.export",
        on_click="ignore",
        help=f"Every entry these filters select, newest first (at most {EXPORT_LIMIT:,}).",
    )
