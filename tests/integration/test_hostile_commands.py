"""Hostile input through the service API: every text field of every command gets every string
of the corpus. Each is either stored verbatim (modulo surrounding whitespace) or refused with
one ValidationError; nothing else is ever raised and a refused command writes nothing."""

import csv
import html
import io
import re
import string
import uuid

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.app.ui import csv_safe, dataframe_csv, dot_label, md_escape, plotly_escape, workflows_csv
from cqrs_core.domain.events import stream_id_for
from cqrs_core.domain.vocabulary import ROLES
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import AuthorizationError, CQRSError, ValidationError
from cqrs_core.projections.engine.verify import verify
from cqrs_core.read.queries import QueryFactory


@pytest.fixture
def service(db_url):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_rate_limit(1e6, 10**6)
        .build()
    )
    yield svc
    svc.close()


def running_workflow(service, f):
    task = uuid.uuid4()
    created = service.execute_command(
        f.create_research_workflow(
            title="Base",
            research_question="Base?",
            methodology="exploratory",
            tasks=[{"task_id": task, "name": "t", "assignee": "bot"}],
        )
    )
    service.execute_command(f.start_workflow(workflow_id=created.aggregate_id))
    return created.aggregate_id, task


def test_corpus_in_every_text_field_is_stored_verbatim_or_refused(service, hostile_inputs):
    f = CommandFactory("alice")
    stored = refused = 0
    for s in hostile_inputs:
        count_before = service.event_store.count()
        try:
            cmd = f.create_research_workflow(
                title=s,
                research_question=s,
                methodology="exploratory",
                tags=[s],
                tasks=[{"name": s, "assignee": s}],
            )
            result = service.execute_command(cmd)
        except ValidationError as exc:
            assert exc.problems or exc.user_message
            assert service.event_store.count() == count_before
            refused += 1
            continue
        events = service.event_store.read_stream(stream_id_for(result.aggregate_id))
        created, added = events[0].payload, events[1].payload
        assert created["title"] == s.strip() and created["research_question"] == s.strip()
        assert (
            created["tags"] == [s.strip()] and added["name"] == s.strip() and added["assignee"] == s.strip()
        )
        stored += 1
    assert stored > 0 and refused > 0


def test_corpus_in_task_and_reason_fields(service, hostile_inputs):
    f = CommandFactory("alice")
    wid, task = running_workflow(service, f)
    service.execute_command(f.start_task(workflow_id=wid, task_id=task))
    for s in hostile_inputs:
        for make, event_type, key in (
            (lambda s=s: f.add_task(workflow_id=wid, name=s, assignee=s), "TaskAdded", "name"),
            (lambda s=s: f.pause_workflow(workflow_id=wid, reason=s), "WorkflowPaused", "reason"),
            (
                lambda s=s: f.update_workflow_details(workflow_id=wid, title=s),
                "WorkflowDetailsUpdated",
                "title",
            ),
        ):
            before = service.event_store.count()
            try:
                result = service.execute_command(make())
            except ValidationError:
                assert service.event_store.count() == before
                continue
            except CQRSError as exc:  # e.g. the same title twice: a rule, stated as one sentence
                assert exc.category == "validation", exc
                continue
            last = service.event_store.read_stream(stream_id_for(wid))[-1]
            assert last.position == result.position and last.event_type == event_type
            assert last.payload[key] == s.strip()
            if event_type == "WorkflowPaused":
                service.execute_command(f.resume_workflow(workflow_id=wid))

    # Completing the workflow cancels every hostile-named task still pending or running, one
    # TaskCancelled each; the read models fold them and a replay agrees.
    open_before = sum(
        1 for e in service.event_store.read_stream(stream_id_for(wid)) if e.event_type == "TaskAdded"
    )
    result = service.execute_command(f.complete_workflow(workflow_id=wid, reason="corpus done"))
    ending = service.event_store.read_stream(stream_id_for(wid))[-open_before - 1 :]
    assert [e.event_type for e in ending] == ["TaskCancelled"] * open_before + ["WorkflowCompleted"]
    assert ending[-1].position == result.position
    service.projections.catch_up()
    report = verify(service.engine)
    assert report.ok, "\n".join(report.lines())


def test_oversized_inputs_get_clear_limits(service):
    f = CommandFactory("alice")
    with pytest.raises(ValidationError, match="200"):
        f.create_research_workflow(title="x" * 100_000, research_question="q", methodology="exploratory")
    with pytest.raises(ValidationError, match="200"):
        f.create_research_workflow(
            title="t",
            research_question="q",
            methodology="exploratory",
            tasks=[{"name": f"t{i}", "assignee": "a"} for i in range(10_000)],
        )
    with pytest.raises(ValidationError, match="10"):
        f.create_research_workflow(
            title="t", research_question="q", methodology="exploratory", tags=[f"tag{i}" for i in range(11)]
        )
    # a deep dependency chain inside the limit is fine; the task limit bounds it
    chain, prev = [], None
    for i in range(200):
        tid = uuid.uuid4()
        chain.append(
            {"task_id": tid, "name": f"step {i}", "assignee": "a", "depends_on": [prev] if prev else []}
        )
        prev = tid
    result = service.execute_command(
        f.create_research_workflow(
            title="chain", research_question="q", methodology="exploratory", tasks=chain
        )
    )
    assert len(result.events) == 201
    with pytest.raises(ValidationError, match="at most 200 tasks"):
        service.execute_command(f.add_task(workflow_id=result.aggregate_id, name="one more", assignee="a"))


# ---------------------------------------------------------------- the output sinks

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A formula character where a spreadsheet may start a cell: at the start, or after a separator
# (`;` / `,` in the locale's CSV dialect, tab, `|`, a line break) and any spaces.
FORMULA_CELL = re.compile(r"(?:^|[;,|\t\r\n])[ \t]*[=+\-@\t\r]")
WORKFLOW_NUMBERS = {"duration_seconds", "task_total", "task_completed", "task_failed", "progress_pct"}
STATISTICS_TEXT = {"day", "methodology", "kind", "assignee"}


def inert(cell: str) -> bool:
    """No spreadsheet runs `cell` as a formula, wherever it splits it."""
    return cell.startswith("'") or not FORMULA_CELL.search(cell)


def csv_cells(data: bytes, numbers=None, text=None):
    """(column, cell, is_text) for every cell of a CSV export, each of which must be quoted."""
    quoted = csv.reader(io.StringIO(data.decode("utf-8")), quoting=csv.QUOTE_NONNUMERIC)
    assert all(isinstance(cell, str) for row in quoted for cell in row)  # an unquoted cell reads as a float
    for row in csv.DictReader(io.StringIO(data.decode("utf-8"))):
        for column, cell in row.items():
            is_text = column in text if text is not None else column not in numbers
            yield column, cell, is_text


def assert_markdown_inert(shown: str, typed: str) -> None:
    """Every ASCII punctuation character of `typed` reaches markdown behind a backslash, so none
    can start a link, an image, emphasis, HTML or a directive; unescaping gives the text back."""
    out, i = [], 0
    while i < len(shown):
        ch = shown[i]
        if ch == "\\":
            assert shown[i + 1] in string.punctuation, shown
            out.append(shown[i + 1])
            i += 2
            continue
        assert ch not in string.punctuation, (ch, shown)
        out.append(ch)
        i += 1
    assert "".join(out) == typed.replace("\n", "  \n")


def dot_string_value(label: str) -> str:
    """What Graphviz reads from `"label"` (its lexer, then label escapes), failing if the quoted
    string would end early or run on."""
    value, i = [], 0
    while i < len(label):
        ch = label[i]
        if ch == '"':
            raise AssertionError(f"unescaped quote in {label!r}")
        if ch == "\\":
            nxt = label[i + 1 : i + 2]
            assert nxt in ('"', "\\"), f"lone backslash in {label!r}"
            value.append(nxt)
            i += 2
            continue
        value.append(ch)
        i += 1
    return "".join(value)


def test_corpus_reaches_csv_plotly_markdown_and_dot_sinks_as_plain_text(service, hostile_inputs):
    """Every corpus string that commands accept, as title, question, tag, task name, assignee and
    actor, comes out of every output encoder as inert text: CSV cells never start a formula (numbers
    stay numbers), Plotly labels hold no tag, markdown banners no markup, DOT labels one string."""
    stored = []
    for s in hostile_inputs:
        try:
            f = CommandFactory(s if s.strip() and len(s) <= 100 and "\x00" not in s else "alice")
            cmd = f.create_research_workflow(
                title=s,
                research_question=s,
                methodology="exploratory",
                tags=[s],
                tasks=[{"name": s, "assignee": s}],
            )
            result = service.execute_command(cmd)
        except ValidationError:
            continue
        service.execute_command(f.start_workflow(workflow_id=result.aggregate_id))
        stored.append(s.strip())
    assert len(stored) > 40
    service.projections.catch_up(timeout=60)
    service.execute_command(CommandFactory("op", role="operator").refresh_statistics())

    exported = workflows_csv(service, "", {}, limit=len(stored) + 1)
    cells = list(csv_cells(exported, numbers=WORKFLOW_NUMBERS))
    assert sorted(c for col, c, _ in cells if col == "title") == sorted(csv_safe(s) for s in stored)
    for column, cell, is_text in cells:
        assert not is_text or inert(cell), (column, cell)
        assert is_text or cell == "" or float(cell) >= 0
    separated = [s for s in stored if not s.startswith(FORMULA_STARTS) and FORMULA_CELL.search(s)]
    assert {"Q3 report;=1+1", "safe;=cmd|' /C calc'!A0", "a, +1", "x | @SUM(1)"} <= set(separated)
    assert {c for col, c, _ in cells if col == "title"} >= {"'" + s for s in separated}

    stats = service.execute_query(QueryFactory().get_statistics(), cache=False)
    for rows in (stats.methodology_outcomes, stats.task_kinds, stats.assignee_load, stats.daily_throughput):
        for column, cell, is_text in csv_cells(dataframe_csv(pd.DataFrame(rows)), text=STATISTICS_TEXT):
            assert not is_text or inert(cell), (column, cell)
            assert is_text or cell == "" or float(cell) == float(cell)  # a number, sign kept
    assignees = [row["assignee"] for row in stats.assignee_load]
    assert sorted(assignees) == sorted(set(stored))
    for name in assignees:
        label = plotly_escape(name)
        assert (
            "<" not in label and ">" not in label and html.unescape(label) == name
        )  # Plotly decodes entities

    for s in stored:
        assert_markdown_inert(md_escape(s), s)
        assert dot_string_value(dot_label(s)).rstrip(" ") == s[:60].translate(CONTROL_TO_SPACE).rstrip(" ")
    assert dataframe_csv(pd.DataFrame({"n": [-1, 2]})).decode().split() == ['"n"', '"-1"', '"2"']


CONTROL_TO_SPACE = {c: " " for c in [*range(32), 127]}


TEXT = st.one_of(
    st.text(max_size=300), st.sampled_from(["", " ", "\x00", "'; DROP TABLE events; --", "a" * 5000])
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    title=TEXT,
    question=TEXT,
    methodology=st.text(max_size=30) | st.sampled_from(["exploratory"]),
    tags=st.lists(TEXT, max_size=12),
    priority=st.text(max_size=10) | st.sampled_from(["high"]),
    estimate=st.one_of(st.none(), st.integers(-10, 10**7)),
)
def test_fuzzed_create_commands_only_ever_fail_with_validation_errors(
    service, title, question, methodology, tags, priority, estimate
):
    before = service.event_store.count()
    try:
        cmd = CommandFactory("fuzzer").create_research_workflow(
            title=title,
            research_question=question,
            methodology=methodology,
            tags=tags,
            priority=priority,
            tasks=[{"name": "t", "assignee": "a", "estimate_minutes": estimate}],
        )
        result = service.execute_command(cmd)
    except ValidationError:
        assert service.event_store.count() == before
        return
    assert service.event_store.count() == before + len(result.events)


OPERATOR_ACTIONS = [
    "pause_projection",
    "resume_projection",
    "rebuild_projection",
    "refresh_statistics",
    "retry_parked_events",
    "discard_parked_events",
]
WORKFLOW_ACTIONS = ["create", "start_workflow", "pause_workflow", "cancel_workflow", "add_task"]


def _workflow_command(f, action, wid):
    return {
        "create": lambda: f.create_research_workflow(
            title="t", research_question="q", methodology="exploratory"
        ),
        "start_workflow": lambda: f.start_workflow(workflow_id=wid),
        "pause_workflow": lambda: f.pause_workflow(workflow_id=wid),
        "cancel_workflow": lambda: f.cancel_workflow(workflow_id=wid, reason="r"),
        "add_task": lambda: f.add_task(workflow_id=wid, name="n", assignee="a"),
    }[action]()


@pytest.mark.parametrize("role", ROLES)
def test_authorization_matrix_for_workflow_commands(service, role):
    owner = CommandFactory(f"{role}-user", role="admin")
    allowed = role in ("researcher", "admin")
    for action in WORKFLOW_ACTIONS:
        wid = service.execute_command(
            owner.create_research_workflow(title="t", research_question="q", methodology="exploratory")
        ).aggregate_id
        if action == "pause_workflow":
            service.execute_command(owner.start_workflow(workflow_id=wid))
        before = service.event_store.count()
        cmd = _workflow_command(CommandFactory(f"{role}-user", role=role), action, wid)
        if allowed:
            service.execute_command(cmd)
            assert service.event_store.count() > before
        else:
            with pytest.raises(AuthorizationError):
                service.execute_command(cmd)
            assert service.event_store.count() == before


@pytest.mark.parametrize("role", ROLES)
def test_authorization_matrix_for_operator_actions(service, role):
    f = CommandFactory("someone", role=role)
    allowed = role in ("operator", "admin")
    for action in OPERATOR_ACTIONS:
        kwargs = {"projection": "workflow_summary"} if "projection" in action else {}
        if action == "discard_parked_events":
            kwargs = {"ids": [1]}
        cmd = getattr(f, action)(**kwargs)
        if allowed:
            service.execute_command(cmd)
        else:
            with pytest.raises(AuthorizationError):
                service.execute_command(cmd)
    service.execute_command(
        CommandFactory("op", role="operator").resume_projection(projection="workflow_summary")
    )


def test_errors_never_carry_passwords_or_connection_strings(tmp_path):
    secret_url = "postgresql+psycopg2://admin:hunter2-secret@127.0.0.1:1/nowhere"
    svc = CQRSServiceBuilder(load_settings()).with_database_url(secret_url).with_migrations(False).build()
    try:
        with pytest.raises(CQRSError) as info:
            svc.execute_command(
                CommandFactory("alice").create_research_workflow(
                    title="t", research_question="q", methodology="exploratory"
                )
            )
        text = f"{info.value.user_message} {info.value.to_dict()} {info.value}"
        assert "hunter2" not in text and "127.0.0.1" not in text and "postgresql" not in text
        assert info.value.category == "infrastructure"
    finally:
        svc.close()
