"""Alert notifications (issue 17 part 2) against a real HTTP receiver started by the test: the JSON
body and headers, retries after failures and while the receiver is down, at most one POST per alert
and step (also from a new notifier, as after a restart), routing by severity, webhook tokens never
shown, a slow receiver never blocking `submit`, and the delivery records: written while the
database answers, written on recovery when it did not, and read by the Alerts page's query."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from database_gate import DatabaseGate
from sqlalchemy import text
from waiting import wait_until
from webhook_receiver import Answer, Receiver, free_port

from cqrs_core import CQRSServiceBuilder
from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.ops.webhooks import DeliveryPolicy, WebhookNotifier, WebhookRoutes, open_notifier
from cqrs_core.ops.webhooks.check import notifications_check
from cqrs_core.read.queries import QueryFactory

# Tokens in the path and in the query, as Slack's and Azure's webhook URLs carry them.
PATH_TOKEN = "T0KEN-path-s3cret"
QUERY_TOKEN = "sig-s3cret-value"
SECRET_PATH = f"/services/T0001/B0001/{PATH_TOKEN}?sig={QUERY_TOKEN}&token={QUERY_TOKEN}2"
FAST = DeliveryPolicy(attempts=5, backoff=0.05, backoff_max=0.2, timeout=5.0)


def secret_free(text_: str) -> bool:
    return "s3cret" not in text_


def notice(
    *,
    alert_id: str | None = None,
    step: int = 1,
    severity: str = "critical",
    state: str = "raised",
    summary: str = "workflow_summary is 120 events behind and has not moved for 60 s",
) -> AlertNotice:
    return AlertNotice(
        alert_id=alert_id or str(uuid.uuid4()),
        rule="projection_stalled",
        severity=severity,
        subject="workflow_summary",
        state=state,
        step=step,
        summary=summary,
        actor="alert-evaluator",
        occurred_at=datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC),
    )


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def app_engine(db_url):
    """The records' engine as the app and the worker have it: acting as cqrs_app."""
    engine = make_engine(db_url, pool_size=2, role="cqrs_app")
    yield engine
    engine.dispose()


@pytest.fixture
def notifiers():
    made: list[WebhookNotifier] = []

    def make(
        default: str | None = None, engine=None, policy: DeliveryPolicy = FAST, **by_severity: str
    ) -> WebhookNotifier:
        notifier = WebhookNotifier(WebhookRoutes(default, by_severity), policy, engine)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close(timeout=1)


def rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(text("SELECT * FROM alert_deliveries ORDER BY updated_at"))
        ]


def row_of(engine, alert: AlertNotice) -> dict | None:
    return next((r for r in rows(engine) if (r["alert_id"], r["step"]) == (alert.alert_id, alert.step)), None)


def delivered(engine, alert: AlertNotice) -> dict | None:
    row = row_of(engine, alert)
    return row if row is not None and row["status"] == "delivered" else None


# ---------------------------------------------------------------- delivery


def test_a_notice_is_posted_as_json_with_a_slack_text_line_and_its_fields(receiver, notifiers, app_engine):
    notifier = notifiers(receiver.url("/hook"), app_engine)
    alert = notice(step=3, summary="lag is 120 s <!channel> & rising\nsecond line")

    notifier.submit(alert)

    [got] = wait_until(lambda: receiver.requests, 10, "the POST")
    assert got.path == "/hook"
    assert got.headers["Content-Type"].startswith("application/json")
    assert got.headers["Idempotency-Key"] == f"{alert.alert_id}:3"
    assert got.headers["X-Alert-Step"] == "3" and got.headers["X-Alert-Id"] == alert.alert_id
    assert got.body["text"] == (
        "[CRITICAL] projection_stalled · workflow_summary · raised: "
        "lag is 120 s &lt;!channel&gt; &amp; rising second line"
    )
    assert {k: v for k, v in got.body.items() if k != "text"} == {
        "alert_id": alert.alert_id,
        "rule": "projection_stalled",
        "severity": "critical",
        "subject": "workflow_summary",
        "state": "raised",
        "action": None,
        "step": 3,
        "summary": "lag is 120 s <!channel> & rising\nsecond line",
        "actor": "alert-evaluator",
        "occurred_at": "2026-03-01T12:00:05+00:00",
        "idempotency_key": f"{alert.alert_id}:3",
    }
    record = wait_until(lambda: delivered(app_engine, alert), 10, "the delivery record")
    assert record["attempts"] == 1 and record["last_error"] is None and record["delivered_at"] is not None
    assert record["url"] == f"http://127.0.0.1:{receiver.port}/***"
    assert (record["rule"], record["severity"], record["alert_state"]) == (
        "projection_stalled",
        "critical",
        "raised",
    )


def test_answers_500_and_503_are_tried_again_until_the_receiver_takes_it(receiver, notifiers, app_engine):
    receiver.answers.extend([Answer(500, "boom"), Answer(503, "busy", (("Retry-After", "0"),)), Answer(200)])
    notifier = notifiers(receiver.url(), app_engine)
    alert = notice()

    notifier.submit(alert)

    record = wait_until(lambda: delivered(app_engine, alert), 10, "delivery after two failures")
    assert len(receiver.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in receiver.requests} == {f"{alert.alert_id}:1"}
    assert record["attempts"] == 3
    assert notifier.status().delivered == 1


def test_a_receiver_that_was_down_gets_the_notice_once_it_is_up(notifiers, app_engine):
    down = Receiver(free_port())  # nothing listens on its port yet
    notifier = notifiers(down.url(), app_engine, DeliveryPolicy(attempts=50, backoff=0.1, backoff_max=0.3))
    alert = notice()
    try:
        notifier.submit(alert)
        retrying = wait_until(
            lambda: (r := row_of(app_engine, alert)) and r["attempts"] >= 2 and r, 10, "two failed tries"
        )
        assert retrying["status"] == "sending" and "ConnectError" in retrying["last_error"]
        assert retrying["next_attempt_at"] is not None

        down.start()

        record = wait_until(lambda: delivered(app_engine, alert), 10, "delivery once the receiver is up")
        assert len(down.requests) == 1
        assert record["attempts"] >= 3
    finally:
        down.stop()


def test_a_4xx_answer_is_final_and_recorded_as_failed_without_the_token(
    receiver, notifiers, app_engine, caplog
):
    caplog.set_level(logging.DEBUG)
    receiver.default = Answer(404, "no webhook at {path}")
    notifier = notifiers(receiver.url(SECRET_PATH), app_engine)
    alert = notice()

    notifier.submit(alert)

    record = wait_until(
        lambda: (r := row_of(app_engine, alert)) and r["status"] == "failed" and r, 10, "the failure"
    )
    assert len(receiver.requests) == 1  # a revoked hook does not get better by asking again
    assert record["attempts"] == 1
    assert record["last_error"].startswith("HTTP 404 Not Found: no webhook at ***")
    assert record["url"] == f"http://127.0.0.1:{receiver.port}/***?***"
    assert notifier.status().failed == 1 and secret_free(notifier.status().last_error)
    assert "not delivered" in caplog.text and secret_free(caplog.text)


def test_tries_end_after_the_attempts_setting_and_the_notice_is_recorded_failed(
    receiver, notifiers, app_engine
):
    receiver.default = Answer(500, "still broken")
    notifier = notifiers(
        receiver.url(), app_engine, DeliveryPolicy(attempts=3, backoff=0.05, backoff_max=0.1)
    )
    alert = notice()

    notifier.submit(alert)

    record = wait_until(
        lambda: (r := row_of(app_engine, alert)) and r["status"] == "failed" and r, 10, "giving up"
    )
    assert len(receiver.requests) == 3 and record["attempts"] == 3
    assert record["last_error"] == "HTTP 500 Internal Server Error: still broken"


# ---------------------------------------------------------------- at most once per alert and step


def test_the_same_alert_step_submitted_twice_is_posted_once(receiver, notifiers, app_engine):
    notifier = notifiers(receiver.url(), app_engine)
    alert = notice()

    notifier.submit(alert)
    notifier.submit(alert)
    wait_until(lambda: delivered(app_engine, alert), 10, "the delivery")
    notifier.submit(notice(alert_id=alert.alert_id, step=1, summary="the same step, told again"))
    notifier.submit(notice(alert_id=alert.alert_id, step=2, state="acknowledged"))

    wait_until(lambda: len(receiver.requests) == 2 and notifier.idle(), 10, "the second step")
    assert [r.body["step"] for r in receiver.requests] == [1, 2]
    assert notifier.status().repeats_ignored == 2


def test_a_new_notifier_does_not_post_a_step_another_one_delivered(receiver, notifiers, app_engine):
    alert = notice()
    first = notifiers(receiver.url(), app_engine)
    first.submit(alert)
    wait_until(lambda: delivered(app_engine, alert), 10, "the first delivery")
    first.close()

    after_restart = notifiers(receiver.url(), app_engine)  # what a restarted worker builds
    after_restart.submit(alert)
    after_restart.submit(notice(alert_id=alert.alert_id, step=2, state="resolved"))

    wait_until(lambda: len(receiver.requests) == 2 and after_restart.idle(), 10, "the resolved step")
    assert [r.body["state"] for r in receiver.requests] == ["raised", "resolved"]
    assert after_restart.status().repeats_ignored == 1


# ---------------------------------------------------------------- routing


def test_each_severity_goes_to_its_own_webhook_and_the_rest_to_the_default(receiver, notifiers):
    notifier = notifiers(receiver.url("/default"), critical=receiver.url("/critical"))

    notifier.submit(notice(severity="critical"))
    notifier.submit(notice(severity="warning"))

    wait_until(lambda: len(receiver.requests) == 2, 10, "both notices")
    assert {(r.path, r.body["severity"]) for r in receiver.requests} == {
        ("/critical", "critical"),
        ("/default", "warning"),
    }


def test_the_settings_route_severities_and_a_severity_without_a_webhook_is_not_sent(receiver):
    settings = load_settings(
        alert_webhook_url_warning=receiver.url("/warning"),
        alert_webhook_url_critical=receiver.url("/critical"),
    )
    notifier = open_notifier(settings, None)
    try:
        notifier.submit(notice(severity="warning"))
        notifier.submit(notice(severity="critical"))
        notifier.submit(notice(severity="info"))  # no URL of its own and no default: not sent

        wait_until(lambda: len(receiver.requests) == 2 and notifier.idle(), 10, "the two routed notices")
        assert sorted(r.path for r in receiver.requests) == ["/critical", "/warning"]
    finally:
        notifier.close()


def test_without_any_webhook_nothing_is_queued_or_sent():
    notifier = open_notifier(load_settings(), None)

    notifier.submit(notice())

    assert not notifier.routes.enabled
    assert notifier.status().queued == 0 and notifier.idle()
    assert notifier.close()


# ---------------------------------------------------------------- never blocking, never showing tokens


def test_a_slow_receiver_never_blocks_submit_and_a_full_queue_drops_the_oldest(
    receiver, notifiers, app_engine, caplog
):
    receiver.hold.clear()  # the receiver takes each POST and answers only when released
    notifier = notifiers(receiver.url(), app_engine, DeliveryPolicy(timeout=30, queue_size=5))
    alert_id = str(uuid.uuid4())
    notifier.submit(notice(alert_id=alert_id, step=1))
    wait_until(lambda: receiver.requests, 10, "the first POST, now held")

    slowest = 0.0
    for step in range(2, 22):
        started = time.perf_counter()
        notifier.submit(notice(alert_id=alert_id, step=step))
        slowest = max(slowest, time.perf_counter() - started)

    assert slowest < 0.05  # each returns at once while the receiver holds the first POST
    status = notifier.status()
    assert status.queued == 5 and status.dropped == 15
    receiver.hold.set()
    wait_until(lambda: notifier.idle() and len(receiver.requests) == 6, 20, "the queue sent")
    assert [r.body["step"] for r in receiver.requests] == [1, 17, 18, 19, 20, 21]  # the newest kept
    dropped = {r["step"] for r in rows(app_engine) if r["status"] == "dropped"}
    assert dropped == set(range(2, 17))
    assert "dropped 15 alert notification(s)" in caplog.text


def test_webhook_tokens_appear_in_no_log_record_or_status(receiver, notifiers, app_engine, caplog):
    caplog.set_level(logging.DEBUG)  # httpx logs each request's URL at INFO; debug lines too
    receiver.answers.append(Answer(500, "failed for {path}"))
    notifier = notifiers(receiver.url(SECRET_PATH), app_engine)
    alert = notice()

    notifier.submit(alert)

    wait_until(lambda: delivered(app_engine, alert), 10, "the delivery after one failure")
    assert receiver.requests[0].path == SECRET_PATH  # the token was sent, where it belongs
    assert "HTTP Request: POST" in caplog.text and f"127.0.0.1:{receiver.port}/***?***" in caplog.text
    assert secret_free(caplog.text)
    assert all(secret_free(str(value)) for row in rows(app_engine) for value in row.values())
    assert secret_free(repr(notifier.status()))
    assert notifier.status().routes["critical"] == f"http://127.0.0.1:{receiver.port}/***?***"


def test_the_health_line_names_the_webhooks_redacted_and_is_degraded_by_a_failure(
    receiver, notifiers, app_engine
):
    settings = load_settings(alert_webhook_url=receiver.url(SECRET_PATH))
    check = notifications_check(settings)
    assert check(app_engine).status == "healthy"
    receiver.default = Answer(410, "channel archived")
    notifier = notifiers(receiver.url(SECRET_PATH), app_engine)
    alert = notice()
    notifier.submit(alert)
    wait_until(lambda: (r := row_of(app_engine, alert)) and r["status"] == "failed", 10, "the failure")

    health = check(app_engine)

    assert health.status == "degraded"
    assert f"critical → http://127.0.0.1:{receiver.port}/***?***" in health.detail
    assert "1 not delivered (newest: HTTP 410 Gone: channel archived)" in health.detail
    assert secret_free(health.detail)
    off = notifications_check(load_settings())(app_engine)
    assert off.status == "healthy" and off.detail.startswith("off")


# ---------------------------------------------------------------- the database away


def test_during_a_database_outage_the_webhook_fires_and_the_record_is_written_on_recovery(
    receiver, notifiers, db_url, app_engine
):
    gate = DatabaseGate(db_url)  # closed: nothing answers at the notifier's database address
    outage_engine = make_engine(gate.url, pool_size=1, role="cqrs_app")
    try:
        notifier = notifiers(receiver.url(), outage_engine)
        alert = notice()

        notifier.submit(alert)

        wait_until(lambda: receiver.requests, 10, "the POST during the outage")
        wait_until(lambda: notifier.status().delivered == 1, 10, "the delivery counted")
        assert notifier.status().unrecorded == 1 and row_of(app_engine, alert) is None

        gate.open()

        record = wait_until(lambda: delivered(app_engine, alert), 20, "the record after recovery")
        assert record["attempts"] == 1 and record["delivered_at"] is not None
        assert notifier.status().unrecorded == 0 and len(receiver.requests) == 1
    finally:
        gate.close()
        outage_engine.dispose()


def test_closing_records_what_still_waits_for_a_retry_as_failed(receiver, notifiers, app_engine):
    receiver.default = Answer(503, "down for maintenance")
    notifier = notifiers(receiver.url(), app_engine, DeliveryPolicy(attempts=10, backoff=60, backoff_max=60))
    alert = notice()
    notifier.submit(alert)
    wait_until(lambda: (r := row_of(app_engine, alert)) and r["status"] == "sending", 10, "the first failure")

    assert notifier.close(timeout=1)

    record = row_of(app_engine, alert)
    assert record is not None and record["status"] == "failed" and record["attempts"] == 1
    assert record["last_error"].endswith("the process stopped before the next try")


# ---------------------------------------------------------------- the Alerts page's query


def test_the_deliveries_query_lists_the_newest_first_and_filters_the_failures(
    receiver, notifiers, db_url, app_engine
):
    receiver.answers.extend([Answer(200), Answer(404, "gone")])
    notifier = notifiers(receiver.url(SECRET_PATH), app_engine)
    sent, refused = notice(), notice(severity="warning")
    notifier.submit(sent)
    wait_until(lambda: delivered(app_engine, sent), 10, "the first delivery")
    notifier.submit(refused)
    wait_until(lambda: (r := row_of(app_engine, refused)) and r["status"] == "failed", 10, "the refusal")
    service = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_database_role("cqrs_app")
        .with_migrations(False)
        .build()
    )
    try:
        every = service.execute_query(QueryFactory().get_alert_deliveries(), cache=False)
        failures = service.execute_query(
            QueryFactory().get_alert_deliveries(status=["failed", "dropped"]), cache=False
        )
    finally:
        service.close()

    assert [(d["alert_id"], d["status"]) for d in every.deliveries] == [
        (refused.alert_id, "failed"),
        (sent.alert_id, "delivered"),
    ]
    assert every.counts == {"sending": 0, "delivered": 1, "failed": 1, "dropped": 0}
    [failure] = failures.deliveries
    assert failure["last_error"] == "HTTP 404 Not Found: gone" and failure["attempts"] == 1
    assert failure["url"] == f"http://127.0.0.1:{receiver.port}/***?***"


def test_the_deliveries_query_refuses_an_unknown_status_in_one_sentence():
    from cqrs_core.infra.errors import ValidationError

    with pytest.raises(ValidationError) as refused:
        QueryFactory().get_alert_deliveries(status=["lost"])
    assert "unknown delivery status 'lost'" in refused.value.user_message


def test_submit_from_many_threads_posts_each_step_once(receiver, notifiers, app_engine):
    notifier = notifiers(receiver.url(), app_engine)
    alert_id = str(uuid.uuid4())
    threads = [
        threading.Thread(
            target=lambda s=step: [notifier.submit(notice(alert_id=alert_id, step=s)) for _ in range(5)]
        )
        for step in range(1, 11)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    wait_until(lambda: notifier.idle() and len(receiver.requests) == 10, 20, "ten steps")
    assert sorted(r.body["step"] for r in receiver.requests) == list(range(1, 11))
