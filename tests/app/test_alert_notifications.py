"""The Alerts page's "Notifications" section (`render_notifications`), drawn in a page of its own:
where alert changes are sent with the webhook tokens masked, how many were delivered, are being
retried, failed or were dropped, a warning naming the newest failure, the newest notifications with
their tries and last error, and a toggle that keeps only the failures."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from page_harness import texts
from streamlit.testing.v1 import AppTest

from cqrs_core.app.runtime import open_runtime
from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.infra.config import load_settings
from cqrs_core.ops.webhooks import records
from cqrs_core.ops.webhooks.records import DeliveryRecord

PAGE = Path(__file__).with_name("notifications_page.py")
CRITICAL_URL = "https://hooks.example.com/services/T01/B02/crit-s3cret-token?sig=q-s3cret"
WARNING_URL = "https://hooks.example.com/services/T01/B03/warn-s3cret-token"
HOSTILE_ERROR = "HTTP 404 Not Found: **no** [hook](https://evil.example) <b>here</b>"


@pytest.fixture
def runtimes(db_url):
    opened = []

    def open_(**settings):
        runtime = open_runtime(load_settings(database_url=db_url, projections_in="none", **settings))
        opened.append(runtime)
        return runtime

    yield open_
    for runtime in opened:
        runtime.close()


def notice(step: int, severity: str = "critical", state: str = "raised") -> AlertNotice:
    return AlertNotice(
        alert_id=str(uuid.uuid4()),
        rule="projection_stalled",
        severity=severity,
        subject="workflow_summary",
        state=state,
        step=step,
        summary="workflow_summary has not moved for 60 s",
        actor="alert-evaluator",
        occurred_at=datetime.now(UTC) - timedelta(minutes=step),
    )


def seed(runtime) -> None:
    """Four deliveries, each row changed after the one before (in this order)."""
    now = datetime.now(UTC)
    records.save(
        runtime.engine,
        [
            DeliveryRecord.of(notice(1), CRITICAL_URL, "delivered", 1, last_attempt_at=now, delivered_at=now),
            DeliveryRecord.of(
                notice(3), CRITICAL_URL, "dropped", 0, last_error="dropped: the queue was full"
            ),
            DeliveryRecord.of(
                notice(2, "warning"), WARNING_URL, "failed", 1, last_error=HOSTILE_ERROR, last_attempt_at=now
            ),
            DeliveryRecord.of(
                notice(4, state="resolved"),
                CRITICAL_URL,
                "sending",
                2,
                last_error="HTTP 503 Service Unavailable",
                next_attempt_at=now + timedelta(seconds=4),
            ),
        ],
    )


def open_section(runtime) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=30)
    at.session_state["runtime"] = runtime
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(at: AppTest) -> str:
    cells = [str(v) for frame in at.dataframe for v in frame.value.to_numpy().ravel()]
    return "\n".join([texts(at), *cells, *(m.label for m in at.metric)])


def test_the_section_counts_lists_and_warns_without_showing_a_token(runtimes):
    runtime = runtimes(alert_webhook_url_critical=CRITICAL_URL, alert_webhook_url_warning=WARNING_URL)
    seed(runtime)

    at = open_section(runtime)

    plain = texts(at).replace("\\", "")
    assert (
        "Alert changes are sent to: warning → https://hooks.example.com/***, critical → https://hooks.example.com/***?***."
        in plain
    )
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {
        "Delivered (last 24 h)": "1",
        "Being retried (last 24 h)": "1",
        "Failed (last 24 h)": "1",
        "Dropped (last 24 h)": "1",
    }
    [warning] = at.warning
    assert "2 alert notification(s) of the last 24 hours did not reach their webhook" in warning.value
    # the receiver's answer is shown as text: no bold, link or HTML takes effect
    assert (
        "\\*\\*no\\*\\* \\[hook\\]\\(https\\:\\/\\/evil\\.example\\) \\<b\\>here\\<\\/b\\>" in warning.value
    )
    table = at.dataframe[0].value
    assert list(table["Delivery"]) == ["sending", "failed", "dropped", "delivered"]  # latest change first
    assert list(table["Tries"]) == [2, 1, 0, 1]
    assert set(table["Webhook"]) == {"https://hooks.example.com/***", "https://hooks.example.com/***?***"}
    assert table.loc[table["Delivery"] == "failed", "Last error"].item() == HOSTILE_ERROR
    assert "s3cret" not in shown(at)


def test_the_toggle_keeps_only_the_notifications_that_were_not_delivered(runtimes):
    runtime = runtimes(alert_webhook_url=CRITICAL_URL)
    seed(runtime)
    at = open_section(runtime)

    at.toggle(key="notifications.failures_only").set_value(True).run()

    assert not at.exception
    assert sorted(at.dataframe[0].value["Delivery"]) == ["dropped", "failed"]


def test_with_no_webhook_the_section_says_notifications_are_off(runtimes):
    at = open_section(runtimes())

    assert "Notifications are off: set CQRS_ALERT_WEBHOOK_URL" in at.info[0].value
    assert "No alert notification has been sent yet." in texts(at)
    assert not at.dataframe and not at.warning
