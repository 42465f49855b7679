"""The alert evaluator against a real database, rule by rule: an alert is raised once its
condition has lasted the rule's hold (not before), one open alert per rule and subject however
often the rules run, and it resolves by itself when the condition clears. One leader evaluates;
a snooze silences an alert until it runs out; a failing notify stops nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from alert_checks import Watch, alert_events, alert_steps, watch
from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text
from waiting import wait_until

from cqrs_core import CommandFactory
from cqrs_core.app.demo import inject_poison_event
from cqrs_core.ops.alerts.evaluator import Remedy
from cqrs_core.ops.alerts.facts import FactGatherer
from cqrs_core.ops.alerts.rules import RULES, Condition, Limits, Rule, reported

OLGA = CommandFactory(actor="olga", role="operator")
RAISED, RESOLVED = ["AlertRaised"], ["AlertRaised", "AlertResolved"]


@pytest.fixture
def make_watch(db_url):
    made: list[Watch] = []

    def make(**settings) -> Watch:
        w = watch(db_url, **settings)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def create_workflow(w: Watch) -> str:
    alice = CommandFactory(actor="alice")
    return w.service.execute_command(
        alice.create_research_workflow(title="Sleep", research_question="Why?", methodology="exploratory")
    ).aggregate_id


def steps(w: Watch, rule: str, subject: str) -> list[list[str]]:
    """The event types of each alert of (rule, subject), oldest alert first."""
    return alert_steps(w.engine, rule).get((rule, subject), [])


def lifecycle(w: Watch, rule: str, subject: str, hold: float, clear) -> None:
    """The condition of `rule` on `subject` holds now: no alert before `hold` seconds of it, then
    exactly one, which resolves by itself once `clear()` has cleared the condition."""
    w.evaluate()
    if hold:
        assert steps(w, rule, subject) == [], "raised before its hold"
        w.clock.advance(hold - 1)
        w.evaluate()
        assert steps(w, rule, subject) == [], "raised before its hold"
        w.clock.advance(1)
        w.evaluate()
    assert steps(w, rule, subject) == [RAISED]
    w.clock.advance(5)
    w.evaluate(3)
    assert steps(w, rule, subject) == [RAISED], "one open alert per rule and subject"
    clear()
    w.clock.advance(5)
    w.evaluate()
    assert steps(w, rule, subject) == [RESOLVED]
    [notice_raised, notice_resolved] = [n for n in w.notices if n.rule == rule and n.subject == subject]
    assert (notice_raised.state, notice_raised.step) == ("raised", 1)
    assert (notice_resolved.state, notice_resolved.step) == ("resolved", 2)
    assert notice_raised.severity == RULES[rule].severity and notice_resolved.actor == "alerts"
    resolved = alert_events(w.engine, notice_raised.alert_id)[-1]
    assert resolved.actor == "alerts" and resolved.payload["automatic"] is True
    assert resolved.payload["reason"].startswith("Cleared:")


def poisoned(w: Watch) -> None:
    """A TaskStarted of a workflow never created: workflow_summary (fault) stops in front of it,
    task_summary (skip) parks it and goes on."""
    inject_poison_event(w.service.event_store, actor="olga", role="operator")
    w.service.projections.catch_up(timeout=30)
    status = {s.name: s for s in w.service.projections.status()}
    assert status["workflow_summary"].state == "faulted" and status["task_summary"].parked == 1


def discard_parked(w: Watch, projection: str) -> None:
    manager = w.service.projections
    manager.discard_parked([p.id for p in manager.parked(projection)])
    manager.resume(projection)
    manager.catch_up(timeout=30)


def test_a_faulted_projection(make_watch):
    w = make_watch(alert_faulted_hold_seconds=20)
    poisoned(w)
    lifecycle(w, "projection_faulted", "workflow_summary", 20, lambda: discard_parked(w, "workflow_summary"))


def test_parked_events(make_watch):
    w = make_watch(alert_parked_hold_seconds=15)
    poisoned(w)
    lifecycle(w, "parked_events", "task_summary", 15, lambda: discard_parked(w, "task_summary"))


def behind(w: Watch, seconds: float) -> None:
    """Events wait and nobody applies them, for `seconds` by the database's clock."""
    create_workflow(w)
    # Waiting is the behaviour: the oldest waiting event must grow older than the threshold.
    time.sleep(seconds)


def test_a_stalled_projection_whose_reader_is_gone(make_watch):
    w = make_watch(alert_stalled_seconds=0.5, alert_stalled_hold_seconds=10)
    behind(w, 0.6)
    lifecycle(
        w, "projection_stalled", "workflow_summary", 10, lambda: w.service.projections.catch_up(timeout=30)
    )
    # Every projection that had the events waiting stalled alike: one alert each.
    stalled = {subject for _, subject in alert_steps(w.engine, "projection_stalled")}
    assert stalled >= {"workflow_summary", "task_summary", "workflow_activity"}


def test_lag_over_the_threshold_for_the_hold(make_watch):
    w = make_watch(alert_lag_seconds=0.5, alert_lag_hold_seconds=30)
    behind(w, 0.6)
    lifecycle(w, "projection_lag", "task_summary", 30, lambda: w.service.projections.catch_up(timeout=30))


def test_a_stale_statistics_view(make_watch):
    w = make_watch(alert_view_age_seconds=600, alert_view_age_hold_seconds=5)
    w.service.projections.refresh_views()
    with w.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE view_refreshes SET refreshed_at = clock_timestamp() - interval '1 hour'"
                " WHERE view_name = 'stats_task_kind'"
            )
        )
    lifecycle(w, "view_stale", "stats_task_kind", 5, w.service.projections.refresh_views)


def test_a_slow_database_raises_and_resolves_under_a_leader_with_a_sensible_threshold(db_url, make_watch):
    slow = make_watch(alert_database_slow_ms=0.0001, alert_database_slow_hold_seconds=0)
    slow.evaluate(3)
    [[steps]] = alert_steps(slow.engine, "database_slow").values()
    assert steps == RAISED
    # Configured sensibly (and restarted): the new leader finds the alert open and resolves it.
    slow.evaluator.close()
    sensible = make_watch()
    sensible.evaluate()
    assert alert_steps(sensible.engine, "database_slow") == {("database_slow", "database"): [RESOLVED]}


def test_the_database_probe_of_an_unreachable_server_says_what_failed_without_where(make_watch):
    from cqrs_core.infra.db import make_engine

    w = make_watch()
    unreachable = make_engine("postgresql+psycopg2://nobody:s3cret@127.0.0.1:1/nowhere", pool_size=1)
    try:
        facts = FactGatherer(unreachable, w.service.projections, w.service.settings).gather(w.clock())
    finally:
        unreachable.dispose()
    assert not facts.database.reachable and facts.projections is None
    assert facts.database.error.startswith("OperationalError: ")
    assert "127.0.0.1" not in facts.database.error and "s3cret" not in facts.database.error
    assert RULES["database_unreachable"].check(
        facts, RULES["database_unreachable"].limits(w.service.settings)
    )


def test_missed_scheduler_runs_within_the_window(make_watch):
    w = make_watch(alert_missed_runs_window_seconds=60)
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_listener(w.history.record, EVENT_JOB_MISSED)
    # A run due 10 s ago with a 1 s grace: the scheduler misses it as soon as it starts.
    scheduler.add_job(
        lambda: None,
        "date",
        id="view-refresh",
        run_date=datetime.now(UTC) - timedelta(seconds=10),
        misfire_grace_time=1,
    )
    scheduler.start()
    try:
        wait_until(lambda: w.history.missed_runs(), 10, "the scheduler to miss the run")
    finally:
        scheduler.shutdown()
    # Out of the window after 60 s by the evaluator's clock, which `lifecycle` moves on.
    lifecycle(w, "scheduler_missed_runs", "view-refresh", 0, lambda: w.clock.advance(60))


def test_one_leader_evaluates_and_another_takes_over_when_it_goes(make_watch):
    first, second = make_watch(alert_faulted_hold_seconds=0), make_watch(alert_faulted_hold_seconds=0)
    poisoned(first)
    for _ in range(3):
        first.evaluate()
        second.evaluate()
    assert first.evaluator.leading and not second.evaluator.leading
    assert alert_steps(first.engine, "projection_faulted") == {
        ("projection_faulted", "workflow_summary"): [RAISED]
    }
    assert second.notices == []

    first.evaluator.close()  # the leader goes: the other finds the open alert, raises no second one
    second.evaluate(2)
    assert second.evaluator.leading
    assert alert_steps(first.engine, "projection_faulted") == {
        ("projection_faulted", "workflow_summary"): [RAISED]
    }
    discard_parked(first, "workflow_summary")  # its manager holds the projections
    second.evaluate()
    assert alert_steps(first.engine, "projection_faulted") == {
        ("projection_faulted", "workflow_summary"): [RESOLVED]
    }


def test_a_snoozed_alert_is_silent_until_the_snooze_runs_out_then_raised_again(make_watch):
    w = make_watch(alert_faulted_hold_seconds=0)
    poisoned(w)
    w.evaluate()
    [alert] = [n.alert_id for n in w.notices if n.rule == "projection_faulted"]
    until = datetime.now(UTC) + timedelta(seconds=1.5)
    w.service.execute_command(OLGA.snooze_alert(alert_id=alert, until=until, reason="fixing it"))
    w.evaluate(2)
    assert [e.event_type for e in alert_events(w.engine, alert)] == ["AlertRaised", "AlertSnoozed"]

    # The snooze running out is the behaviour under test: wait for it, evaluating meanwhile.
    def evaluate_now() -> bool:
        w.clock.now = datetime.now(UTC)
        w.evaluate()
        return len(alert_events(w.engine, alert)) == 3

    wait_until(evaluate_now, 10, "the snooze to end")
    events = alert_events(w.engine, alert)
    assert [e.event_type for e in events] == ["AlertRaised", "AlertSnoozed", "AlertSnoozeEnded"]
    assert events[-1].occurred_at >= until and events[-1].actor == "alerts"
    woke = [n for n in w.notices if n.alert_id == alert][-1]
    assert (woke.state, woke.step) == ("raised", 3) and "still holds after its snooze" in woke.summary
    assert [n.state for n in w.notices if n.alert_id == alert] == ["raised", "snoozed", "raised"]


def test_a_failing_notify_stops_neither_the_evaluation_nor_the_change(db_url):
    told = []

    def broken(notice):
        told.append(notice.state)
        raise RuntimeError("the webhook is down")

    w = watch(db_url, notify=broken, alert_faulted_hold_seconds=0)
    try:
        poisoned(w)
        w.evaluate()  # does not raise
        [[steps]] = alert_steps(w.engine, "projection_faulted").values()
        assert steps == RAISED
        alert = alert_events(
            w.engine, w.evaluator.open_alerts()[("projection_faulted", "workflow_summary")].alert_id
        )
        acked = w.service.execute_command(
            OLGA.acknowledge_alert(alert_id=alert[0].correlation_id, reason="on it")
        )
        assert [e.event_type for e in acked.events] == ["AlertAcknowledged"]
        assert told.count("acknowledged") == 1 and "raised" in told
    finally:
        w.close()


def test_the_runtime_runs_the_evaluator_on_its_scheduler(db_url):
    w = watch(db_url, alert_evaluate_seconds=0.2, alert_faulted_hold_seconds=0, projection_poll_seconds=0.1)
    runtime = w.service.projection_runtime()
    runtime.start()
    try:
        assert "alerts" in {job.job_id for job in runtime.jobs()}
        inject_poison_event(w.service.event_store, actor="olga", role="operator")
        wait_until(
            lambda: alert_steps(w.engine, "projection_faulted"),
            30,
            "the scheduled evaluation to raise the alert",
        )
        assert any(n.rule == "projection_faulted" for n in w.notices)
        wait_until(lambda: (runtime.history.last("alerts") or (0, "", 0))[1] == "ok", 10, "a run recorded ok")
    finally:
        assert runtime.stop(timeout=10)
        w.close()


def test_drift_found_by_continuous_verification_raises_an_alert_naming_projection_stream_and_columns(
    make_watch,
):
    from cqrs_core.projections.engine.continuous_verify import SampleSize

    w = make_watch()
    workflow_id = create_workflow(w)
    w.service.projections.catch_up(timeout=30)
    # A read-model row changed behind the projection's back (as the owner).
    with w.engine.begin() as conn:
        conn.execute(
            text("UPDATE workflow_summary SET owner = 'eve' WHERE workflow_id = :w"), {"w": workflow_id}
        )
    every_stream = SampleSize(streams=1000, percent=100, max_events=20_000)
    report = w.service.projections.verify_sample(size=every_stream)
    assert report is not None and report.drifted == {"workflow_summary": [f"workflow-{workflow_id}"]}

    subject = f"workflow_summary/workflow-{workflow_id}"

    def repaired() -> None:
        w.service.projections.rebuild("workflow_summary")
        again = w.service.projections.verify_sample(size=every_stream)
        assert again is not None and again.resolved == 1

    lifecycle(w, "read_model_drift", subject, 0, repaired)
    [raised] = [n for n in w.notices if n.rule == "read_model_drift" and n.state == "raised"]
    assert "workflow_summary" in raised.summary and "owner" in raised.summary
    assert f"workflow-{workflow_id}" in raised.summary


def test_a_rule_fed_from_outside_raises_and_resolves_what_its_gather_reports(db_url):
    """How continuous verification's drift plugs in: one entry with a `gather` of its own."""
    failing = {"yes": False}

    def open_findings(engine) -> list[Condition]:
        if failing["yes"]:
            raise RuntimeError("the findings cannot be read")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT subject, what FROM test_findings ORDER BY subject")).all()
        return [Condition(r.subject, r.what) for r in rows]

    fed = Rule(
        "test_drift",
        "Read model drift",
        "critical",
        lambda s: Limits(0, 0),
        reported("test_drift"),
        open_findings,
    )
    w = watch(db_url, rules={**RULES, fed.name: fed})
    try:
        with w.engine.begin() as conn:
            conn.execute(text("CREATE TABLE test_findings (subject text, what text)"))
            conn.execute(
                text("INSERT INTO test_findings VALUES ('task_summary', 'status differs for workflow-1')")
            )
        w.evaluate(2)
        assert steps(w, "test_drift", "task_summary") == [RAISED]
        [notice] = [n for n in w.notices if n.rule == "test_drift"]
        assert (notice.severity, notice.summary) == ("critical", "status differs for workflow-1")
        failing["yes"] = True  # cannot tell: the alert stays as it is
        with w.engine.begin() as conn:
            conn.execute(text("DELETE FROM test_findings"))
        w.evaluate()
        assert steps(w, "test_drift", "task_summary") == [RAISED]
        failing["yes"] = False
        w.evaluate()
        assert steps(w, "test_drift", "task_summary") == [RESOLVED]
    finally:
        w.close()


def test_a_remedys_long_account_is_cut_and_a_failing_remedy_stops_nothing(db_url):
    """What a remedy did goes into the alert's history cut to an alert's text (a restart of many
    partitions says a lot); a remedy that raises leaves its alert raised, and the evaluation goes
    on to the other subjects and rules."""

    def fed(name: str, subjects: list[str]) -> Rule:
        conditions = [Condition(s, f"{s} is wrong") for s in subjects]
        return Rule(name, name, "warning", lambda s: Limits(0, 0), reported(name), lambda _e: conditions)

    def remedy(subject: str) -> str:
        if subject == "b":
            raise RuntimeError("the remedy broke")
        return "restarted " + "x" * 3000

    rules = {"first_rule": fed("first_rule", ["a", "b", "c"]), "second_rule": fed("second_rule", ["d"])}
    w = watch(db_url, rules=rules, remedies={"first_rule": Remedy("auto_restart", remedy)})
    try:
        w.evaluate(1)
        assert (
            steps(w, "first_rule", "a")
            == steps(w, "first_rule", "c")
            == [["AlertRaised", "AlertActionTaken"]]
        )
        assert steps(w, "first_rule", "b") == [RAISED]
        assert steps(w, "second_rule", "d") == [RAISED]
        with w.engine.connect() as conn:
            reasons = (
                conn.execute(
                    text("SELECT payload->>'reason' FROM events WHERE event_type = 'AlertActionTaken'")
                )
                .scalars()
                .all()
            )
        assert [(len(r), r[:10], r[-1]) for r in reasons] == [(1000, "restarted ", "…")] * 2
    finally:
        w.close()
