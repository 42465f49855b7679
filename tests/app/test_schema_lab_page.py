"""The Event explorer's schema parts (issue 16): the selected event as stored and as this code reads
it, the correlation trace's "Reads as", and the schema lab (heatmap of type x schema version, the
dry run of the whole log)."""

from __future__ import annotations

import json
import uuid

import operator_pages
import pytest
from operator_pages import app_and_service, table
from sqlalchemy import create_engine, text
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from cqrs_core.domain.events import stream_id_for
from cqrs_core.write.commands import CommandFactory

PAGE = "pages/event_explorer.py"
HOSTILE_TYPE = "<img src=x onerror=alert(1)>\n**Bold** {{x}}"


@pytest.fixture
def service(db_url, monkeypatch):
    yield from app_and_service(db_url, db_url, monkeypatch)


def insert_rows(db_url: str, workflow_id: str, rows: list[tuple[int, str, int, dict]]) -> list[uuid.UUID]:
    """Rows (version, type, schema version, payload) as an older build (or a hand repair) wrote
    them; returns their correlation ids."""
    engine = create_engine(db_url)
    correlations = []
    try:
        with engine.begin() as conn:
            for version, event_type, schema_version, payload in rows:
                correlations.append(uuid.uuid4())
                conn.execute(
                    text(
                        """INSERT INTO events (stream_id, version, event_type, schema_version, payload, event_id,
                                               correlation_id, actor)
                           VALUES (:s, :v, :t, :sv, CAST(:p AS jsonb), :id, :c, 'alice')"""
                    ),
                    {
                        "s": stream_id_for(workflow_id),
                        "v": version,
                        "t": event_type,
                        "sv": schema_version,
                        "p": json.dumps(payload),
                        "id": uuid.uuid4(),
                        "c": correlations[-1],
                    },
                )
    finally:
        engine.dispose()
    return correlations


def v1_log(db_url: str) -> tuple[str, list[uuid.UUID]]:
    """Positions 1-2: a workflow and a TaskAdded stored at v1."""
    wid = str(uuid.uuid4())
    created = {
        "workflow_id": wid,
        "title": "Old study",
        "research_question": "Q?",
        "methodology": "exploratory",
        "tags": [],
        "priority": "normal",
        "owner": "alice",
        "due_date": None,
    }
    task = {"task_id": str(uuid.uuid4()), "name": "Search", "kind": "literature_search", "assignee": "bob",
            "estimate_minutes": 45, "depends_on": []}  # fmt: skip
    return wid, insert_rows(db_url, wid, [(1, "WorkflowCreated", 1, created), (2, "TaskAdded", 1, task)])


def open_page() -> AppTest:
    return operator_pages.open_page(PAGE, timeout=30)


def test_an_old_event_is_shown_as_stored_and_as_this_code_reads_it(service, db_url):
    v1_log(db_url)
    at = open_page()
    at.selectbox(key="explorer.event").set_value(2).run()

    stored, read = (json.loads(j.value) for j in at.json[:2])
    assert (stored["event_type"], stored["schema_version"]) == ("TaskAdded", 1)
    assert stored["payload"]["estimate_minutes"] == 45 and "estimate" not in stored["payload"]
    assert (read["event_type"], read["schema_version"]) == ("TaskAdded", 2)
    assert read["payload"]["estimate"] == {"minutes": 45, "confidence": None}
    assert "estimate_minutes" not in read["payload"]
    assert any("upcast: TaskAdded v1 -> v2" in c.value.replace("\\", "") for c in at.caption)


def test_an_event_this_code_cannot_read_says_why(service, db_url):
    wid, _ = v1_log(db_url)
    insert_rows(db_url, wid, [(3, "TaskStarted", 1, {"task_id": "x", "attempt": "twice"})])
    at = open_page()
    at.selectbox(key="explorer.event").set_value(3).run()

    assert len(at.json) == 1  # the stored form only
    [warning] = [w.value.replace("\\", "") for w in at.warning]
    assert "cannot read this event" in warning and "attempt: Input should be a valid integer" in warning


def test_the_trace_says_how_an_old_event_reads(service, db_url):
    _, correlations = v1_log(db_url)
    at = open_page()
    at.text_input(key="explorer.trace_id").set_value(str(correlations[1])).run()

    assert list(table(at, "Reads as")["Reads as"]) == ["upcast to TaskAdded v2"]


def test_the_schema_lab_counts_types_by_version_and_the_dry_run_lists_every_failure(service, db_url):
    wid, _ = v1_log(db_url)
    insert_rows(db_url, wid, [(3, HOSTILE_TYPE, 1, {})])
    service.execute_command(
        CommandFactory(actor="alice", role="researcher").create_research_workflow(
            title="New",
            research_question="Q?",
            methodology="exploratory",
            tasks=[{"name": "T", "assignee": "bob"}],
        )
    )
    at = open_page()

    census = table(at, "Read as")
    cells = {
        (t, v): (n, r) for t, v, n, r in census[["Event type", "Schema version", "Events", "Read as"]].values
    }
    assert cells[("TaskAdded", "v1")] == (1, "upcast to TaskAdded v2")
    assert cells[("TaskAdded", "v2")] == (1, "current")
    hostile_label = HOSTILE_TYPE.replace("\n", " ")  # one line; Vega-Lite draws it as text
    assert cells[(hostile_label, "v1")] == (1, "unknown type")
    [chart] = at.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    assert spec["layer"][0]["mark"]["type"] == "rect" and "data" not in spec
    drawn = convert_arrow_bytes_to_pandas_df(chart.proto.data.data)
    assert hostile_label in set(drawn["Event type"]) and not drawn["Event type"].str.contains("\n").any()

    at.button(key="schema.dry_run").click().run()

    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Events read"], metrics["Would fail"]) == ("5", "1")
    failures = table(at, "Problem")
    assert list(failures["Position"]) == [3] and "unknown event type" in failures["Problem"][0]
    upcasters = table(at, "Events touched")
    assert dict(upcasters.values) == {"TaskAdded v1 -> v2": 1}
    assert any("would not read with this code" in e.value for e in at.error)
