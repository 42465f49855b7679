"""People's steps on an alert go through the command bus: operators and admins only, with a reason,
idempotent by command id, on the audit timeline, announced once committed. The read side lists
the open alerts first with who took their steps, each alert's history, and its correlation trace;
the workflow timeline passes the alert events over; the metrics export open alerts by rule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from alert_checks import alert_events
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from cqrs_core import CommandFactory, CQRSServiceBuilder, QueryFactory
from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.errors import AuthorizationError, DomainRuleViolation, NotFoundError, ValidationError
from cqrs_core.ops.alerts.evaluator import EVALUATOR_ACTOR
from cqrs_core.ops.alerts.rules import RULES
from cqrs_core.ops.metrics_export import metrics_registry

Q = QueryFactory()
EVALUATOR = CommandFactory(actor=EVALUATOR_ACTOR, role="operator")
OLGA = CommandFactory(actor="olga", role="operator")


@pytest.fixture
def notices() -> list[AlertNotice]:
    return []


@pytest.fixture
def service(db_url, notices):
    svc = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_rate_limit(1e6, 10**6)
        .with_alert_notify(notices.append)
        .build()
    )
    yield svc
    svc.close()


def raise_alert(
    service, rule="projection_lag", subject="task_summary", severity="warning", summary="behind"
) -> str:
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


def audit(service) -> list[dict]:
    return service.execute_query(Q.get_audit_trail(), cache=False).entries


def test_an_operator_acknowledges_with_a_reason_on_the_timeline_and_announced(service, notices):
    alert = raise_alert(service)
    result = service.execute_command(OLGA.acknowledge_alert(alert_id=alert, reason="looking into it"))

    events = alert_events(service.engine, alert)
    assert [(e.event_type, e.actor) for e in events] == [
        ("AlertRaised", "alerts"),
        ("AlertAcknowledged", "olga"),
    ]
    assert events[1].payload == {"reason": "looking into it"} and events[1].command_id == result.command_id
    [entry] = audit(service)  # the evaluator's raise is the alert's history, not an operator action
    assert (entry["actor"], entry["action"], entry["outcome"]) == ("olga", "alert.acknowledge", "accepted")
    assert entry["parameters"] == {"alert_id": alert, "reason": "looking into it"}
    assert [(n.state, n.step, n.actor) for n in notices] == [
        ("raised", 1, "alerts"),
        ("acknowledged", 2, "olga"),
    ]
    assert notices[1].summary == "olga acknowledged projection_lag on task_summary: looking into it"
    assert notices[1].occurred_at == events[1].occurred_at


def test_a_snooze_needs_a_reason_and_an_end_within_seven_days(service):
    alert = raise_alert(service)
    now = datetime.now(UTC)
    with pytest.raises(ValidationError, match="reason"):
        OLGA.snooze_alert(alert_id=alert, until=now + timedelta(hours=1), reason="   ")
    for until, refusal in (
        (now - timedelta(minutes=1), "in the future"),
        (now + timedelta(days=8), "at most 7 days"),
    ):
        with pytest.raises(DomainRuleViolation, match=refusal):
            service.execute_command(OLGA.snooze_alert(alert_id=alert, until=until, reason="later"))
    assert len(alert_events(service.engine, alert)) == 1
    service.execute_command(
        OLGA.snooze_alert(alert_id=alert, until=now + timedelta(hours=4), reason="after the deploy")
    )
    [entry] = [e for e in audit(service) if e["outcome"] == "accepted"]
    assert entry["action"] == "alert.snooze" and entry["parameters"]["reason"] == "after the deploy"
    assert [e["detail"] for e in audit(service) if e["outcome"] == "refused"] == [
        "A snooze lasts at most 7 days; acknowledge the alert if someone is on it.",
        "A snooze must end in the future; pick a later time.",
    ]


@pytest.mark.parametrize("role", ["researcher", "analyst"])
def test_only_operators_and_admins_take_steps_and_a_refusal_is_on_the_timeline(service, role):
    alert = raise_alert(service)
    with pytest.raises(AuthorizationError, match="needs the operator role"):
        service.execute_command(
            CommandFactory(actor="rita", role=role).acknowledge_alert(alert_id=alert, reason="x")
        )
    service.execute_command(
        CommandFactory(actor="ada", role="admin").acknowledge_alert(alert_id=alert, reason="ok")
    )
    assert [(e["actor"], e["outcome"]) for e in audit(service)] == [("ada", "accepted"), ("rita", "refused")]


def test_the_same_step_sent_twice_has_one_effect(service, notices):
    alert = raise_alert(service)
    ack = OLGA.acknowledge_alert(alert_id=alert, reason="on it")
    first, again = service.execute_command(ack), service.execute_command(ack)
    assert again.duplicate and again.position == first.position
    assert len(alert_events(service.engine, alert)) == 2 and len(audit(service)) == 1
    assert [n.state for n in notices] == ["raised", "acknowledged"]


def test_steps_on_a_resolved_or_unknown_alert_are_refused_in_one_sentence(service):
    alert = raise_alert(service)
    service.execute_command(EVALUATOR.resolve_alert(alert_id=alert, reason="Cleared.", automatic=True))
    with pytest.raises(DomainRuleViolation) as refused:
        service.execute_command(OLGA.acknowledge_alert(alert_id=alert, reason="late"))
    assert refused.value.user_message == (
        "This alert is resolved, so it cannot be acknowledged; reload to see where it stands."
    )
    with pytest.raises(NotFoundError, match="There is no alert"):
        service.execute_command(OLGA.acknowledge_alert(alert_id=uuid.uuid4(), reason="x"))
    assert len(alert_events(service.engine, alert)) == 2


def test_the_read_side_lists_open_alerts_first_with_each_step_and_its_history(service):
    warning = raise_alert(service, rule="projection_lag", subject="task_summary")
    critical = raise_alert(
        service, rule="projection_faulted", subject="workflow_summary", severity="critical"
    )
    done = raise_alert(service, rule="parked_events", subject="task_summary")
    until = datetime.now(UTC) + timedelta(hours=2)
    service.execute_command(OLGA.acknowledge_alert(alert_id=warning, reason="on it"))
    service.execute_command(OLGA.snooze_alert(alert_id=warning, until=until, reason="deploy first"))
    last = service.execute_command(EVALUATOR.resolve_alert(alert_id=done, reason="Cleared.", automatic=True))

    service.projections.catch_up(timeout=30)
    alerts = service.execute_query(Q.get_alerts(), min_position=last.position)
    assert [a["alert_id"] for a in alerts.open] == [critical, warning]  # critical first
    snoozed = alerts.open[1]
    assert (snoozed["state"], snoozed["acknowledged_by"], snoozed["snoozed_by"]) == (
        "snoozed",
        "olga",
        "olga",
    )
    assert snoozed["snoozed_until"] == until and snoozed["last_reason"] == "deploy first"
    [resolved] = alerts.recent
    assert (resolved["alert_id"], resolved["resolved_by"], resolved["state"]) == (done, "alerts", "resolved")

    history = service.execute_query(Q.get_alert_history(warning), cache=False)
    assert [(s["step"], s["actor"], s["why"]) for s in history.steps] == [
        ("raised", "alerts", "behind"),
        ("acknowledged", "olga", "on it"),
        ("snoozed", "olga", "deploy first"),
    ]
    assert history.steps[2]["until"] == until
    with pytest.raises(NotFoundError):
        service.execute_query(Q.get_alert_history(uuid.uuid4()), cache=False)


def test_an_alert_is_in_its_correlation_trace_and_the_workflow_timeline_passes_it_over(service):
    alert = raise_alert(service)
    service.execute_command(OLGA.acknowledge_alert(alert_id=alert, reason="on it", correlation_id=alert))
    service.projections.catch_up(timeout=30)

    trace = service.execute_query(Q.get_correlation_trace(alert), cache=False)
    assert [c["command_type"] for c in trace.commands] == ["RaiseAlert", "AcknowledgeAlert"]
    for event in trace.events:
        assert event["outcomes"] == {
            "alert_summary": "applied",
            "task_summary": "skipped",
            "workflow_activity": "skipped",
            "workflow_summary": "skipped",
        }
    with service.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM parked_events")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM workflow_activity")).scalar_one() == 0


def test_open_alerts_are_exported_by_rule_with_a_zero_for_every_rule_without_one(service):
    def gauge() -> dict[tuple[str, str], float]:
        exposition = generate_latest(metrics_registry(lambda: service.projections)).decode()
        return {
            (s.labels["rule"], s.labels["severity"]): s.value
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
            if s.name == "cqrs_alerts_open"
        }

    assert gauge() == {(rule.name, rule.severity): 0 for rule in RULES.values()}
    alert = raise_alert(service, rule="projection_stalled", subject="task_summary", severity="critical")
    raise_alert(service, rule="projection_stalled", subject="workflow_summary", severity="critical")
    service.execute_command(OLGA.acknowledge_alert(alert_id=alert, reason="on it"))  # still open
    service.projections.catch_up(timeout=30)
    assert gauge()[("projection_stalled", "critical")] == 2
    assert sum(gauge().values()) == 2
