"""The Event explorer page: the global log newest first, filters, keyset paging in both
directions, an event's JSON shown verbatim, and the correlation trace."""

import json
import re
from datetime import date

import operator_pages
import pytest
from dot_reader import dot_statements
from operator_pages import app_and_service, table
from streamlit.testing.v1 import AppTest

from cqrs_core.app import ui
from cqrs_core.app.demo import inject_poison_event
from cqrs_core.read.queries import BAD_CORRELATION_ID
from cqrs_core.write.commands import CommandFactory

PAGE = "pages/event_explorer.py"


@pytest.fixture
def service(db_url, monkeypatch):
    yield from app_and_service(db_url, db_url, monkeypatch)


def create(service, title: str = "Study", tasks: int = 0):
    return service.execute_command(
        CommandFactory(actor="alice", role="researcher").create_research_workflow(
            title=title,
            research_question="Does it work?",
            methodology="exploratory",
            tasks=[{"name": f"Task {i}", "assignee": "bob"} for i in range(tasks)],
        )
    )


def open_page() -> AppTest:
    return operator_pages.open_page(PAGE, timeout=30)


def errors(at: AppTest) -> list[str]:
    """Error texts as a person reads them (the page escapes markdown in messages)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]


def positions(at: AppTest) -> list[int]:
    return list(table(at, "Event type")["Position"])


def test_log_pages_older_and_newer_with_keyset_cursors(service):
    for i in range(60):
        create(service, f"Study {i}")
    at = open_page()
    at.selectbox(key="explorer.page_size").set_value(25).run()

    assert positions(at) == list(range(60, 35, -1))
    assert at.button(key="explorer.newer").disabled

    at.button(key="explorer.older").click().run()
    assert positions(at) == list(range(35, 10, -1))
    at.button(key="explorer.older").click().run()
    assert positions(at) == list(range(10, 0, -1))
    assert at.button(key="explorer.older").disabled

    at.button(key="explorer.newer").click().run()  # keyset "after 10", shown newest first
    assert positions(at) == list(range(35, 10, -1))
    assert at.session_state["explorer.cursor"] == ("after", 10)
    at.button(key="explorer.newer").click().run()  # past the newest: back to a full newest page
    assert positions(at) == list(range(60, 35, -1))
    assert at.button(key="explorer.newer").disabled

    create(service, "Arrived later")
    at.run()
    assert positions(at) == list(range(60, 35, -1))  # the page does not shift under a person's click
    assert not at.button(key="explorer.newer").disabled
    at.button(key="explorer.newer").click().run()
    assert positions(at) == list(range(61, 36, -1))


def test_filters_by_type_stream_correlation_and_time(service):
    first = create(service, "First", tasks=2)
    create(service, "Second", tasks=1)
    at = open_page()
    assert len(positions(at)) == 5

    at.multiselect(key="explorer.types").set_value(["TaskAdded"]).run()
    assert list(table(at, "Event type")["Event type"]) == ["TaskAdded"] * 3

    at.text_input(key="explorer.stream").set_value(first.aggregate_id).run()  # a bare workflow id works
    assert len(positions(at)) == 2

    at.multiselect(key="explorer.types").set_value([]).run()
    at.text_input(key="explorer.stream").set_value("").run()
    at.text_input(key="explorer.correlation").set_value(str(first.correlation_id)).run()
    assert positions(at) == [3, 2, 1]

    at.text_input(key="explorer.correlation").set_value("not-a-uuid").run()
    assert errors(at) == [BAD_CORRELATION_ID]  # one sentence, not the UUID parser's text

    at.text_input(key="explorer.correlation").set_value("").run()
    at.selectbox(key="explorer.window").set_value("Between dates").run()
    assert len(positions(at)) == 5  # the last seven days
    at.date_input(key="explorer.dates").set_value((date(2020, 1, 1), date(2020, 1, 31))).run()
    assert any("No events match these filters" in i.value for i in at.info)


def test_event_json_shows_hostile_text_verbatim(service, hostile_inputs):
    hostile = [h for h in hostile_inputs if h.strip() and "\x00" not in h and len(h) <= 200][:12]
    for text in hostile:
        create(service, text)
    at = open_page()

    shown = set()
    for position in positions(at):
        at.selectbox(key="explorer.event").set_value(position).run()
        shown.add(json.loads(at.json[0].value)["payload"]["title"])
    assert shown == {h.strip() for h in hostile}


def outcomes(at: AppTest) -> list[dict[str, str]]:
    """The trace's events table: for each event, what each projection did with it."""
    frame = table(at, "workflow_summary")
    return [{p: frame[p][i] for p in PROJECTIONS} for i in range(len(frame))]


def graph_edges(at: AppTest) -> dict[tuple[str, str], str]:
    """(event node, projection node) -> the edge's label ("" for an applied event) in the trace graph."""
    edges = {}
    for s in dot_statements(at.get("graphviz_chart")[0].proto.spec, "trace"):
        if len(s) > 3 and s[1] == "->" and s[2].startswith('"p'):
            attributes = s[4:-1]
            label = attributes[attributes.index("label") + 2].strip('"') if "label" in attributes else ""
            edges[(s[0].strip('"'), s[2].strip('"'))] = label
    return edges


PROJECTIONS = ("task_summary", "workflow_activity", "workflow_summary")


def test_correlation_trace_shows_command_events_and_projections(service):
    result = create(service, "Traced", tasks=1)
    at = open_page()
    at.selectbox(key="explorer.event").set_value(result.position).run()

    at.button(key="explorer.trace_event").click().run()

    assert at.text_input(key="explorer.trace_id").value == str(result.correlation_id)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Commands"], metrics["Events"]) == ("1", "2")
    assert metrics["Done by every projection"] == "0 of 2"
    assert list(table(at, "Command")["Command"]) == ["CreateResearchWorkflow"]
    assert outcomes(at) == [dict.fromkeys(PROJECTIONS, "not yet")] * 2

    service.projections.catch_up(timeout=10)
    at.run()

    assert {m.label: m.value for m in at.metric}["Done by every projection"] == "2 of 2"
    # WorkflowCreated, then TaskAdded: task_summary handles no workflow event
    assert outcomes(at) == [
        {"task_summary": "skipped", "workflow_activity": "applied", "workflow_summary": "applied"},
        dict.fromkeys(PROJECTIONS, "applied"),
    ]
    created = f"e{result.events[0].position}"
    assert graph_edges(at)[(created, "ptask_summary")] == "skipped"
    assert graph_edges(at)[(created, "pworkflow_summary")] == ""


def test_trace_of_a_poison_event_shows_who_parked_it_and_then_that_it_was_discarded(service):
    create(service, "Healthy")
    poison = inject_poison_event(service.event_store, actor="ops", role="operator")
    service.projections.catch_up(timeout=20)
    at = open_page()

    at.text_input(key="explorer.trace_id").set_value(str(poison.correlation_id)).run()

    assert any("appended directly" in c.value for c in at.caption)
    assert list(table(at, "workflow_summary")["Position"]) == [poison.position]
    parked = {"task_summary": "parked", "workflow_activity": "applied", "workflow_summary": "parked"}
    assert outcomes(at) == [parked]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Done by every projection"], metrics["Parked or discarded"]) == ("0 of 1", "1")
    node = f"e{poison.position}"
    assert {p: graph_edges(at)[(node, f"p{p}")] for p in PROJECTIONS} == parked | {"workflow_activity": ""}

    service.projections.discard_parked([p.id for p in service.projections.parked()])
    service.projections.catch_up(timeout=20)
    at.run()

    discarded = {"task_summary": "discarded", "workflow_activity": "applied", "workflow_summary": "discarded"}
    assert outcomes(at) == [discarded]
    assert {p: graph_edges(at)[(node, f"p{p}")] for p in PROJECTIONS} == discarded | {"workflow_activity": ""}

    at.text_input(key="explorer.trace_id").set_value("00000000-0000-4000-8000-000000000000").run()
    assert errors(at) == ["Nothing was recorded with correlation id 00000000-0000-4000-8000-000000000000."]


def test_a_bad_correlation_id_is_one_sentence_saying_what_one_looks_like(service):
    at = open_page()
    for typed in ("not-a-uuid", "3f2b1c9e-5d4a-4e8f-9b7c", "<b>x</b>"):
        at.text_input(key="explorer.trace_id").set_value(typed).run()
        assert errors(at) == [BAD_CORRELATION_ID]
        assert "UUID" not in BAD_CORRELATION_ID and BAD_CORRELATION_ID.count(".") == 1
        assert not at.get("graphviz_chart") and not at.exception


def test_correlation_graph_keeps_every_node_when_a_cut_label_ends_in_a_backslash(service):
    cut_at_backslash = "b" * 59 + "\\" + " after the cut"  # the 60-character cut ends in the backslash
    result = service.execute_command(
        CommandFactory(actor=cut_at_backslash, role="researcher").create_research_workflow(
            title="Traced",
            research_question="Q?",
            methodology="exploratory",
            tasks=[{"name": "t", "assignee": "bob"}],
        )
    )
    at = open_page()
    at.text_input(key="explorer.trace_id").set_value(str(result.correlation_id)).run()

    statements = dot_statements(at.get("graphviz_chart")[0].proto.spec, "trace")
    nodes = {s[0] for s in statements if len(s) > 1 and s[0].startswith('"') and s[1] == "["}
    projections = {
        f'"p{p}"' for p in ("alert_summary", "task_summary", "workflow_activity", "workflow_summary")
    }
    assert nodes == {f'"c{result.command_id}"', *(f'"e{e.position}"' for e in result.events), *projections}
    edges = [s for s in statements if "->" in s]
    assert len(edges) == len(result.events) * (1 + len(projections))
    command = next(s for s in statements if s[0] == f'"c{result.command_id}"')
    assert command[command.index("label") + 2] == '"CreateResearchWorkflow\\n' + "b" * 59 + '\\\\ "'


def test_log_key_columns_fit_a_1024_px_screen_and_come_first(service):
    """Issue 15 item 17: Event type ran off-screen at 1440 px. The columns a person reads an event
    by come first, with fixed widths within the budget of a 1024 px screen."""
    create(service)
    at = open_page()

    frame = next(f for f in at.dataframe if "Event type" in f.value.columns)
    config = json.loads(frame.proto.columns)
    key = ["Position", "Recorded", "Event type", "Stream"]
    assert list(frame.proto.column_order)[: len(key)] == key
    assert ui.key_columns_width(config, key) <= ui.KEY_COLUMNS_WIDTH_BUDGET
