"""The Alert aggregate: raised → acknowledged → resolved, snoozed-until on the way, each step's
legality from one table, and what each change tells the outside world."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cqrs_core.domain import events as ev
from cqrs_core.domain.alert import ALERT_ACTION_STATES, MAX_SNOOZE, Alert, allowed_alert_actions
from cqrs_core.infra.errors import DomainRuleViolation

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def take(alert: Alert, events: list[ev.DomainEvent]) -> Alert:
    for event in events:
        alert.apply(event)
    return alert


def raised() -> Alert:
    alert = Alert("a1")
    return take(
        alert,
        alert.raise_(rule="projection_lag", subject="task_summary", severity="warning", summary="behind"),
    )


def test_a_raised_alert_is_open_and_its_notice_says_what_the_rule_found():
    alert = raised()
    assert alert.state == "raised" and alert.is_open and alert.version == 1
    notice = alert.notice("alerts", NOW)
    assert (notice.state, notice.step, notice.summary, notice.actor) == ("raised", 1, "behind", "alerts")
    assert (notice.rule, notice.subject, notice.severity) == ("projection_lag", "task_summary", "warning")


def test_acknowledge_then_resolve():
    alert = take(raised(), raised().acknowledge("on it"))
    assert alert.state == "acknowledged" and alert.notice("olga", NOW).summary.endswith("on it")
    with pytest.raises(DomainRuleViolation, match="is acknowledged, so it cannot be acknowledged"):
        alert.acknowledge("again")
    take(alert, alert.resolve("fixed"))
    assert alert.state == "resolved" and not alert.is_open
    for step in (lambda: alert.acknowledge("x"), lambda: alert.resolve("x")):
        with pytest.raises(DomainRuleViolation, match="resolved"):
            step()


def test_snooze_must_end_in_the_future_and_within_the_longest_snooze():
    alert = raised()
    with pytest.raises(DomainRuleViolation, match="in the future"):
        alert.snooze(NOW, "now", NOW)
    with pytest.raises(DomainRuleViolation, match="at most 7 days"):
        alert.snooze(NOW + MAX_SNOOZE + timedelta(seconds=1), "long", NOW)
    take(alert, alert.snooze(NOW + timedelta(hours=1), "deploying", NOW))
    assert alert.state == "snoozed" and alert.snoozed_until == NOW + timedelta(hours=1)


def test_a_snooze_ends_only_once_it_ran_out_and_the_alert_is_raised_again():
    alert = raised()
    take(alert, alert.snooze(NOW + timedelta(hours=1), "deploying", NOW))
    with pytest.raises(DomainRuleViolation, match="not run out"):
        alert.end_snooze("too soon", NOW + timedelta(minutes=59))
    assert alert.snooze_over(NOW + timedelta(hours=1))
    take(alert, alert.end_snooze("ran out", NOW + timedelta(hours=1)))
    assert alert.state == "raised" and alert.snoozed_until is None
    notice = alert.notice("alerts", NOW)
    assert (notice.state, notice.step) == ("raised", 3) and "still holds after its snooze" in notice.summary


def test_acknowledging_a_snoozed_alert_ends_the_snooze():
    alert = raised()
    take(alert, alert.snooze(NOW + timedelta(hours=1), "later", NOW))
    take(alert, alert.acknowledge("now then"))
    assert alert.state == "acknowledged" and alert.snoozed_until is None


def test_an_alert_is_raised_once_and_steps_need_a_raised_alert():
    alert = raised()
    with pytest.raises(DomainRuleViolation, match="raised already"):
        alert.raise_(rule="r", subject="s", severity="warning", summary="x")
    with pytest.raises(DomainRuleViolation, match="never raised"):
        Alert("nope").acknowledge("x")


def test_allowed_actions_follow_the_table():
    assert allowed_alert_actions("raised") == {"acknowledge", "snooze", "resolve"}
    assert allowed_alert_actions("snoozed") == {"acknowledge", "snooze", "end_snooze", "resolve"}
    assert allowed_alert_actions("resolved") == frozenset()
    assert allowed_alert_actions(None) == frozenset()
    assert set(ALERT_ACTION_STATES) == {"acknowledge", "snooze", "end_snooze", "resolve"}


def test_snoozed_until_survives_the_payload_round_trip():
    until = NOW + timedelta(hours=2)
    payload = ev.AlertSnoozed(until=until, reason="later").to_payload()
    assert payload == {"until": until.isoformat(), "reason": "later"}
    assert ev.event_from_payload("AlertSnoozed", payload).until == until


def test_an_action_on_an_open_alert_keeps_its_state_and_its_notice_says_what_was_done():
    alert = take(raised(), raised().acknowledge("on it"))
    alert = take(alert, alert.record_action("auto_restart", "auto-restarted the runner of task_summary"))
    assert (alert.state, alert.version, alert.is_open) == ("acknowledged", 3, True)
    notice = alert.notice("alerts", NOW)
    assert (notice.state, notice.step) == ("acknowledged", 3)
    assert notice.summary == (
        "alerts acted on projection_lag on task_summary: auto-restarted the runner of task_summary"
    )
    # the next step is told as usual again
    alert = take(alert, alert.resolve("cleared", automatic=True))
    assert alert.notice("alerts", NOW).summary == "projection_lag on task_summary resolved: cleared"


def test_nothing_is_done_about_an_alert_never_raised_or_resolved():
    with pytest.raises(DomainRuleViolation, match="was never raised"):
        Alert("a2").record_action("auto_restart", "x")
    alert = take(raised(), raised().resolve("gone"))
    with pytest.raises(DomainRuleViolation, match="resolved: nothing is done about a closed alert"):
        alert.record_action("auto_restart", "x")
    assert "record_action" not in ALERT_ACTION_STATES  # not a button people are offered


def test_an_actions_notice_does_not_read_as_a_new_raise():
    from cqrs_core.ops.webhooks.message import body

    alert = raised()
    alert = take(alert, alert.record_action("auto_restart", "auto-restarted the runner of task_summary"))
    sent = body(alert.notice("alerts", NOW))
    assert (sent["state"], sent["action"], sent["step"]) == ("raised", "auto_restart", 2)
    assert sent["text"].startswith("[WARNING] projection_lag · task_summary · action auto_restart: ")
    assert body(raised().notice("alerts", NOW))["action"] is None
