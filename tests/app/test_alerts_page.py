"""The Alerts page: open alerts first, then the latest resolved; each alert's steps with who and
why; acknowledge and snooze (a reason required) for operators, on the audit timeline; hostile
text shown as typed. And the Overview, which lists the open alerts first."""

from __future__ import annotations

import uuid

import operator_pages
import pytest
from operator_pages import app_and_service, table

from cqrs_core import CommandFactory, QueryFactory
from cqrs_core.app.auth import User
from cqrs_core.projections.engine.runtime import ProjectionRuntime

PAGE = "pages/alerts.py"
EVALUATOR = CommandFactory(actor="alerts", role="operator")
OLGA = User("olga", "operator")
HOSTILE = "<img src=x onerror=alert(1)> **bold** [x](javascript:alert(1)) :red[red] $x$"


@pytest.fixture
def service(db_url, monkeypatch):
    yield from app_and_service(db_url, db_url, monkeypatch)


@pytest.fixture
def runner(service):
    """The projections running in the background, as a worker runs them (the page waits for the
    alert's read model to show a step just taken)."""
    runtime = ProjectionRuntime(service.engine, service.settings, service.projections)
    runtime.start()
    yield runtime
    runtime.stop(timeout=10)


def raise_alert(service, rule: str, subject: str, severity: str = "warning", summary: str = "found") -> str:
    alert_id = uuid.uuid4()
    service.execute_command(
        EVALUATOR.raise_alert(
            alert_id=alert_id,
            rule=rule,
            subject=subject,
            severity=severity,
            summary=summary,
            correlation_id=alert_id,
        )
    )
    return str(alert_id)


def plant(service) -> dict[str, str]:
    ids = {
        "lag": raise_alert(service, "projection_lag", "task_summary", summary="task_summary is 90 s behind"),
        "faulted": raise_alert(
            service, "projection_faulted", "workflow_summary", "critical", "stopped at 17"
        ),
        "parked": raise_alert(service, "parked_events", "task_summary", summary="1 parked event"),
    }
    olga = CommandFactory(actor="olga", role="operator")
    service.execute_command(olga.acknowledge_alert(alert_id=ids["lag"], reason="restarting the worker"))
    service.execute_command(
        EVALUATOR.resolve_alert(alert_id=ids["parked"], reason="Cleared.", automatic=True)
    )
    service.projections.catch_up(timeout=30)
    return ids


def open_page(user: User | None = None):
    return operator_pages.open_page(PAGE, user)


def unescaped_angle(markdown: str) -> bool:
    """Whether a `<` reaches markdown unescaped (it could open HTML)."""
    return "<" in markdown.replace("\\<", "")


def history(at):
    return table(at, "Why")


def test_open_alerts_come_first_critical_first_then_the_resolved_ones(service):
    plant(service)
    at = open_page(OLGA)

    opened = table(at, "Acknowledged by")
    assert list(opened["Alert"]) == ["Projection faulted", "Projection lagging"]
    assert list(opened["Severity"]) == ["critical", "warning"]
    assert list(opened["State"]) == ["raised", "acknowledged"]
    assert list(opened["Acknowledged by"]) == ["", "olga"]
    assert list(opened["Latest reason"]) == ["stopped at 17", "restarting the worker"]
    resolved = table(at, "Resolved")
    assert list(resolved["Alert"]) == ["Parked events"] and list(resolved["By"]) == ["alerts"]


def test_each_step_of_the_chosen_alert_shows_who_took_it_and_why(service):
    ids = plant(service)
    at = open_page(OLGA)
    at.selectbox(key="alerts.chosen").select(ids["lag"]).run()

    steps = history(at)
    assert list(steps["Step"]) == ["raised", "acknowledged"]
    assert list(steps["Who"]) == ["alerts", "olga"]
    assert list(steps["Why"]) == ["task_summary is 90 s behind", "restarting the worker"]
    at.selectbox(key="alerts.chosen").select(ids["parked"]).run()
    assert list(history(at)["Step"]) == ["raised", "resolved (automatically)"]
    # A resolved alert offers no steps.
    assert not [f for f in at.get("form")] and not at.text_input


def test_an_operator_acknowledges_with_a_reason_and_it_is_on_the_timeline(service, runner):
    ids = plant(service)
    at = open_page(OLGA)
    assert at.selectbox(key="alerts.chosen").value == ids["faulted"]

    at.button(key="FormSubmitter:alerts.acknowledge-Acknowledge").click().run()  # no reason given
    assert any("reason" in e.value and "must not be blank" in e.value for e in at.error)
    assert list(history(at)["Step"]) == ["raised"]

    at.text_input(key="alerts.ack_reason").input("discarding the poison event")
    at.button(key="FormSubmitter:alerts.acknowledge-Acknowledge").click().run()
    assert not at.exception and not at.error
    steps = history(at)
    assert list(steps["Step"]) == ["raised", "acknowledged"]
    assert list(steps["Who"]) == ["alerts", "olga"] and steps["Why"].iloc[1] == "discarding the poison event"
    assert table(at, "Acknowledged by")["Acknowledged by"].iloc[0] == "olga"
    assert at.text_input(key="alerts.ack_reason").value == ""  # sent: the form starts afresh
    trail = service.execute_query(QueryFactory().get_audit_trail(actions=["alert.acknowledge"]), cache=False)
    entry = trail.entries[0]  # the newest (plant() acknowledged another alert before)
    assert (entry["actor"], entry["outcome"]) == ("olga", "accepted")
    assert entry["parameters"] == {"alert_id": ids["faulted"], "reason": "discarding the poison event"}


def test_an_operator_snoozes_for_a_while_with_a_reason(service, runner):
    ids = plant(service)
    at = open_page(OLGA)
    at.selectbox(key="alerts.chosen").select(ids["lag"]).run()
    at.selectbox(key="alerts.snooze_for").select("4 hours")
    at.text_input(key="alerts.snooze_reason").input("a fix is deploying")
    at.button(key="FormSubmitter:alerts.snooze-Snooze").click().run()

    assert not at.exception and not at.error
    steps = history(at)
    assert (
        list(steps["Step"]) == ["raised", "acknowledged", "snoozed"]
        and steps["Why"].iloc[2] == "a fix is deploying"
    )
    until = steps["Until"].iloc[2]
    assert at.text_input(key="alerts.snooze_reason").value == ""
    opened = table(at, "Snoozed until")
    assert opened.set_index("Alert").loc["Projection lagging", "State"] == "snoozed"
    hours = (until - steps["When"].iloc[2]).total_seconds() / 3600
    assert 3.99 < hours < 4.01


@pytest.mark.parametrize("role", ["analyst", "researcher"])
def test_people_without_the_operator_role_read_the_alerts_but_take_no_step(service, role):
    plant(service)
    at = open_page(User("rita", role))
    assert table(at, "Acknowledged by") is not None and list(history(at)["Step"]) == ["raised"]
    assert not at.text_input and not at.get("form")
    assert any("need the operator role" in i.value for i in at.info)


def test_hostile_subjects_and_reasons_are_shown_as_typed(service):
    alert = raise_alert(service, "projection_lag", HOSTILE, summary=HOSTILE)
    service.execute_command(
        CommandFactory(actor="olga", role="operator").acknowledge_alert(alert_id=alert, reason=HOSTILE)
    )
    service.projections.catch_up(timeout=30)
    at = open_page(OLGA)
    assert table(at, "Acknowledged by")["Subject"].iloc[0] == HOSTILE  # a table cell is plain text
    assert list(history(at)["Why"]) == [HOSTILE, HOSTILE]
    [heading] = [m.value for m in at.markdown if m.value.startswith("**Projection lagging**")]
    assert "\\<img src\\=x onerror\\=alert\\(1\\)\\>" in heading and unescaped_angle(heading) is False


def test_no_alert_yet(service):
    at = open_page(OLGA)
    assert any("No open alerts" in s.value for s in at.success)
    assert not at.selectbox


# ---------------------------------------------------------------- the Overview


def kinds(block) -> list[str]:
    """The element types a block draws, in order (alert: an error, warning, info or success box)."""
    out = []
    for child in block.children.values():
        if hasattr(child, "children") and child.children:
            out.extend(kinds(child))
        else:
            out.append("alert" if child.type in ("error", "warning", "info", "success") else child.type)
    return out


def test_the_overview_lists_the_open_alerts_first(service):
    plant(service)
    hostile = raise_alert(service, "view_stale", HOSTILE, summary=HOSTILE)
    service.projections.catch_up(timeout=30)
    at = operator_pages.open_page("pages/overview.py", OLGA)

    banner = at.error[0].value  # a critical alert is open: the banner is red, above everything else
    assert banner.startswith("**3 open alerts**")
    lines = banner.split("\n")[2:]
    assert lines[0].startswith("- :material/error: **Projection faulted** · workflow\\_summary · raised")
    assert "**Projection lagging** · task\\_summary · acknowledged" in lines[2]
    assert "\\<img src\\=x" in banner and unescaped_angle(banner) is False
    assert len(lines) == 3 and hostile
    drawn = kinds(at.main)
    assert drawn.index("alert") < drawn.index("metric"), "the alerts come before the numbers"


def test_the_overview_says_when_no_alert_is_open(service):
    at = operator_pages.open_page("pages/overview.py", OLGA)
    assert any("No open alerts." in c.value for c in at.caption)
    assert not any("open alert" in e.value for e in [*at.error, *at.warning])


def test_empty_cells_read_as_a_dash_not_none(service):
    """An open alert is not snoozed and an automatic step has no "until": Streamlit would draw
    those cells as a grey "None"; the page asks for "—"."""
    ids = plant(service)
    at = open_page(OLGA)
    at.selectbox(key="alerts.chosen").select(ids["lag"]).run()

    opened = next(f for f in at.dataframe if "Snoozed until" in f.value.columns)
    assert opened.value["Snoozed until"].isna().all()  # the cells the placeholder fills
    steps = next(f for f in at.dataframe if "Until" in f.value.columns)
    assert steps.value["Until"].isna().all()
    assert [f.proto.placeholder for f in at.dataframe] == ["—"] * len(at.dataframe)
