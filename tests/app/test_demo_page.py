"""The Demo page: seed a small data set with progress, start and stop a live load, inject a
poison event that gets parked, pause a projection, and reset everything after a typed
confirmation — all for operators only."""

import re

import operator_pages
import pytest
from operator_pages import app_and_service
from streamlit.testing.v1 import AppTest
from waiting import wait_until

from cqrs_core.app.auth import User
from cqrs_core.app.demo import demo_controller
from cqrs_core.infra.errors import AuthorizationError
from cqrs_core.read.queries import QueryFactory
from cqrs_core.write.commands import CommandFactory

PAGE = "pages/demo.py"


@pytest.fixture
def service(db_url, monkeypatch):
    yield from app_and_service(db_url, db_url, monkeypatch)


def open_page(user: User | None = None) -> AppTest:
    return operator_pages.open_page(PAGE, user, timeout=60)


def controller_of(at: AppTest):
    return demo_controller(at.session_state["runtime"].service)


def toasts(at: AppTest) -> list[str]:
    return [t.value for t in at.toast]


def successes(at: AppTest) -> list[str]:
    """What the page confirms in place (as a person reads it: the page escapes markdown)."""
    return [re.sub(r"\\(.)", r"\1", s.value) for s in at.success]


def workflow_count(service) -> int:
    return service.execute_query(QueryFactory().get_workflow_list(page_size=1), cache=False).total


def test_seeding_a_small_data_set_shows_progress_and_creates_the_workflows(service):
    at = open_page()
    at.segmented_control(key="seed.size").set_value("Small").run()

    at.button(key="seed.start").click().run()

    assert "Seeding 100 workflows in the background." in successes(at)
    assert toasts(at) == []  # confirmed in its card, not by a toast over the page's caption
    assert at.get("progress"), "no progress bar while seeding"
    controller = controller_of(at)
    wait_until(lambda: not controller.seeding.running, 60, "the seeding to finish")
    at.run()
    assert any(s.value.startswith("Seeded 100 workflows with seed ") for s in at.success)
    service.projections.catch_up(timeout=60)
    assert workflow_count(service) == 100


def test_live_load_starts_at_the_chosen_rate_and_stops(service):
    at = open_page()
    at.number_input(key="load.rate").set_value(40).run()

    at.button(key="load.start").click().run()
    assert "Live load started at 40 commands/s." in successes(at)
    controller = controller_of(at)
    try:
        wait_until(lambda: controller.load.snapshot().commands >= 10, 30, "the load to send 10 commands")
        at.run()
        assert int({m.label: m.value for m in at.metric}["Commands sent"].replace(",", "")) >= 10
        assert at.button(key="load.start").disabled

        at.button(key="load.stop").click().run()
    finally:
        controller.load.stop()
    assert any(t.startswith("Live load stopped after ") for t in successes(at))
    assert not controller.load.running
    assert service.event_store.count() >= 10
    assert not at.button(key="load.start").disabled


def test_a_refused_presenter_action_says_why_once_and_toasts_nothing(service):
    at = open_page()
    controller = controller_of(at)
    controller.start_load(5, role="operator")  # started elsewhere after this page was drawn
    try:
        at.button(key="load.start").click().run()
        assert [re.sub(r"\\(.)", r"\1", e.value) for e in at.error] == [
            "A live load is already running; stop it first."
        ]
        assert not [t for t in toasts(at) + successes(at) if t.startswith("Live load started")]
        at.run()
        assert not at.error  # shown once, not on every run after
    finally:
        controller.load.stop()


def test_injected_poison_event_gets_parked_and_can_be_discarded(service):
    at = open_page()

    at.button(key="fault.inject").click().run()

    fault = controller_of(at).last_fault
    assert f"Injected a poison event at position {fault.position:,}." in successes(at)
    assert any(f"Last fault: position {fault.position:,}" in c.value for c in at.caption)
    service.projections.catch_up(timeout=20)
    parked = service.projections.parked()
    assert {p.position for p in parked} == {fault.position}
    assert "task_summary" in {p.projection for p in parked}

    at.run()
    # The card's fragment reruns every few seconds: the message stays until the next action.
    assert f"Injected a poison event at position {fault.position:,}." in successes(at)
    at.button(key="fault.discard").click().run()  # the recovery half of the demo

    assert successes(at).count("Discarded the poison event; the projections move past it.") == 1
    assert not [s for s in successes(at) if s.startswith("Injected a poison event")]
    assert service.projections.parked() == []


def test_pausing_a_projection_lets_lag_grow_until_it_is_resumed(service):
    at = open_page()
    at.selectbox(key="pause.projection").set_value("workflow_summary").run()
    at.button(key="pause.pause").click().run()
    assert "Paused workflow_summary." in successes(at)

    service.execute_command(
        CommandFactory(actor="alice", role="researcher").create_research_workflow(
            title="While paused", research_question="Lag?", methodology="exploratory"
        )
    )
    service.projections.catch_up(timeout=10)
    at.run()
    shown = {m.label: m.value for m in at.metric}
    assert (shown["State"], shown["Lag"]) == ("paused", "1 event")

    at.button(key="pause.resume").click().run()
    service.projections.catch_up(timeout=10)
    at.run()
    assert {m.label: m.value for m in at.metric}["Lag"] == "0 events"


def test_reset_needs_the_typed_word_and_then_empties_everything(service):
    researcher = CommandFactory(actor="alice", role="researcher")
    for i in range(3):
        service.execute_command(
            researcher.create_research_workflow(
                title=f"Study {i}", research_question="Why?", methodology="case_study"
            )
        )
    service.projections.catch_up(timeout=10)
    at = open_page()
    assert at.button(key="reset.run").disabled

    at.text_input(key="reset.confirm").set_value("reset").run()
    assert at.button(key="reset.run").disabled
    assert any("Type RESET exactly" in c.value for c in at.caption)

    at.text_input(key="reset.confirm").set_value("RESET").run()
    at.button(key="reset.run").click().run()

    assert toasts(at) == []
    assert any(s.startswith("Deleted 3 events and 3 commands") for s in successes(at))
    assert at.text_input(key="reset.confirm").value == ""
    assert service.event_store.count() == 0
    assert workflow_count(service) == 0


def test_researcher_cannot_run_presenter_actions(service):
    at = open_page(User("rita", "researcher"))

    assert any("need the operator role" in i.value for i in at.info)
    for key in ("seed.start", "load.start", "fault.inject", "pause.pause", "reset.run"):
        assert at.button(key=key).disabled, key
    controller = controller_of(at)
    with pytest.raises(AuthorizationError) as refused:
        controller.inject_poison_event(actor="rita", role="researcher")
    assert (
        refused.value.user_message == "A researcher cannot inject a poison event; it needs the operator role."
    )
    with pytest.raises(AuthorizationError):
        controller.reset(role="researcher")
    with pytest.raises(AuthorizationError):
        controller.start_load(10, role="researcher")
    assert service.event_store.count() == 0 and not controller.load.running


def test_an_operator_runs_presenter_actions_but_reset_needs_an_admin(service):
    at = open_page(User("olga", "operator"))

    assert not at.button(key="seed.start").disabled
    assert at.button(key="reset.run").disabled and at.text_input(key="reset.confirm").disabled
    assert any(c.value.startswith("Resetting needs an admin.") for c in at.caption)
    with pytest.raises(AuthorizationError) as refused:
        controller_of(at).reset(role="operator", actor="olga")
    assert refused.value.user_message == "Only an admin can reset the demo data; ask an admin to do it."


def test_a_reset_forgets_the_last_seed_report_and_toasts_nothing(service):
    at = open_page()
    controller = controller_of(at)
    controller.seed(5, role="operator", seed=7)
    wait_until(lambda: not controller.seeding.running, 60, "the seeding to finish")
    at.run()
    assert any(s.startswith("Seeded 5 workflows with seed 7") for s in successes(at))

    at.text_input(key="reset.confirm").set_value("RESET").run()
    at.button(key="reset.run").click().run()

    assert not [s for s in successes(at) if s.startswith("Seeded")], successes(at)
    assert not [p for p in at.get("progress") if p.proto.text.startswith("Seeded")]
    assert toasts(at) == []
    assert any(c.value == "No seed has run in this app process yet." for c in at.caption)
    at.run()
    assert toasts(at) == [] and not [s for s in successes(at) if s.startswith("Seeded")]
