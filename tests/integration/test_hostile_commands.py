"""Hostile input through the service API: every text field of every command gets every string
of the corpus. Each is either stored verbatim (modulo surrounding whitespace) or refused with
one ValidationError; nothing else is ever raised and a refused command writes nothing."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.commands import ROLES
from cqrs_core.config import load_settings
from cqrs_core.domain.events import stream_id_for
from cqrs_core.errors import AuthorizationError, CQRSError, ValidationError


@pytest.fixture
def service(db_url):
    svc = (CQRSServiceBuilder(load_settings()).with_database_url(db_url).with_migrations(False)
           .with_rate_limit(1e6, 10**6).build())
    yield svc
    svc.close()


def running_workflow(service, f):
    task = uuid.uuid4()
    created = service.execute_command(f.create_research_workflow(
        title="Base", research_question="Base?", methodology="exploratory",
        tasks=[{"task_id": task, "name": "t", "assignee": "bot"}]))
    service.execute_command(f.start_workflow(workflow_id=created.aggregate_id))
    return created.aggregate_id, task


def test_corpus_in_every_text_field_is_stored_verbatim_or_refused(service, hostile_inputs):
    f = CommandFactory("alice")
    stored = refused = 0
    for s in hostile_inputs:
        count_before = service.event_store.count()
        try:
            cmd = f.create_research_workflow(title=s, research_question=s, methodology="exploratory", tags=[s],
                                             tasks=[{"name": s, "assignee": s}])
            result = service.execute_command(cmd)
        except ValidationError as exc:
            assert exc.problems or exc.user_message
            assert service.event_store.count() == count_before
            refused += 1
            continue
        events = service.event_store.read_stream(stream_id_for(result.aggregate_id))
        created, added = events[0].payload, events[1].payload
        assert created["title"] == s.strip() and created["research_question"] == s.strip()
        assert created["tags"] == [s.strip()] and added["name"] == s.strip() and added["assignee"] == s.strip()
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
            (lambda s=s: f.update_workflow_details(workflow_id=wid, title=s), "WorkflowDetailsUpdated", "title"),
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


def test_oversized_inputs_get_clear_limits(service):
    f = CommandFactory("alice")
    with pytest.raises(ValidationError, match="200"):
        f.create_research_workflow(title="x" * 100_000, research_question="q", methodology="exploratory")
    with pytest.raises(ValidationError, match="200"):
        f.create_research_workflow(title="t", research_question="q", methodology="exploratory",
                                   tasks=[{"name": f"t{i}", "assignee": "a"} for i in range(10_000)])
    with pytest.raises(ValidationError, match="10"):
        f.create_research_workflow(title="t", research_question="q", methodology="exploratory",
                                   tags=[f"tag{i}" for i in range(11)])
    # a deep dependency chain inside the limit is fine; the task limit bounds it
    chain, prev = [], None
    for i in range(200):
        tid = uuid.uuid4()
        chain.append({"task_id": tid, "name": f"step {i}", "assignee": "a", "depends_on": [prev] if prev else []})
        prev = tid
    result = service.execute_command(f.create_research_workflow(
        title="chain", research_question="q", methodology="exploratory", tasks=chain))
    assert len(result.events) == 201
    with pytest.raises(ValidationError, match="at most 200 tasks"):
        service.execute_command(f.add_task(workflow_id=result.aggregate_id, name="one more", assignee="a"))


TEXT = st.one_of(st.text(max_size=300), st.sampled_from(["", " ", "\x00", "'; DROP TABLE events; --", "a" * 5000]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=TEXT, question=TEXT, methodology=st.text(max_size=30) | st.sampled_from(["exploratory"]),
       tags=st.lists(TEXT, max_size=12), priority=st.text(max_size=10) | st.sampled_from(["high"]),
       estimate=st.one_of(st.none(), st.integers(-10, 10**7)))
def test_fuzzed_create_commands_only_ever_fail_with_validation_errors(service, title, question, methodology,
                                                                     tags, priority, estimate):
    before = service.event_store.count()
    try:
        cmd = CommandFactory("fuzzer").create_research_workflow(
            title=title, research_question=question, methodology=methodology, tags=tags, priority=priority,
            tasks=[{"name": "t", "assignee": "a", "estimate_minutes": estimate}])
        result = service.execute_command(cmd)
    except ValidationError:
        assert service.event_store.count() == before
        return
    assert service.event_store.count() == before + len(result.events)


OPERATOR_ACTIONS = ["pause_projection", "resume_projection", "rebuild_projection", "refresh_statistics",
                    "retry_parked_events", "discard_parked_events"]
WORKFLOW_ACTIONS = ["create", "start_workflow", "pause_workflow", "cancel_workflow", "add_task"]


def _workflow_command(f, action, wid):
    return {
        "create": lambda: f.create_research_workflow(title="t", research_question="q", methodology="exploratory"),
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
        wid = service.execute_command(owner.create_research_workflow(
            title="t", research_question="q", methodology="exploratory")).aggregate_id
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
    service.execute_command(CommandFactory("op", role="operator").resume_projection(projection="workflow_summary"))


def test_errors_never_carry_passwords_or_connection_strings(tmp_path):
    secret_url = "postgresql+psycopg2://admin:hunter2-secret@127.0.0.1:1/nowhere"
    svc = (CQRSServiceBuilder(load_settings()).with_database_url(secret_url).with_migrations(False).build())
    try:
        with pytest.raises(CQRSError) as info:
            svc.execute_command(CommandFactory("alice").create_research_workflow(
                title="t", research_question="q", methodology="exploratory"))
        text = f"{info.value.user_message} {info.value.to_dict()} {info.value}"
        assert "hunter2" not in text and "127.0.0.1" not in text and "postgresql" not in text
        assert info.value.category == "infrastructure"
    finally:
        svc.close()
