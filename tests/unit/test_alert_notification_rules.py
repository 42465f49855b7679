"""Alert notifications without a network or a database: the Slack-compatible text line and the
JSON body, the headers, the retry schedule, routing by severity, masking a URL in free text, and
the webhook settings (a bad URL is refused without being echoed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.infra.config import SettingsError, load_settings
from cqrs_core.ops.webhooks import DeliveryPolicy, WebhookRoutes
from cqrs_core.ops.webhooks.message import TEXT_LIMIT, body, headers, text_line
from cqrs_core.ops.webhooks.routes import without_url


def notice(**fields) -> AlertNotice:
    values = {
        "alert_id": "3f2b1c9e-5d4a-4e8f-9b7c-1a2b3c4d5e6f",
        "rule": "lag_over",
        "severity": "warning",
        "subject": "task_summary",
        "state": "acknowledged",
        "step": 2,
        "summary": "task_summary is 45 s behind",
        "actor": "olga",
        "occurred_at": datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))),
    }
    return AlertNotice(**{**values, **fields})


def test_the_text_line_names_severity_rule_subject_state_and_summary():
    assert (
        text_line(notice()) == "[WARNING] lag_over · task_summary · acknowledged: task_summary is 45 s behind"
    )


def test_the_text_line_is_one_line_of_text_that_no_markup_escapes():
    line = text_line(notice(summary="a <!channel> ping & <https://evil|click>\r\nand\u2028more"))
    assert line.endswith("a &lt;!channel&gt; ping &amp; &lt;https://evil|click&gt; and more")
    assert "\n" not in line and "\r" not in line


def test_a_long_summary_is_cut_to_the_text_limit():
    line = text_line(notice(summary="x" * (3 * TEXT_LIMIT)))
    assert len(line) == TEXT_LIMIT and line.endswith("…")


def test_the_body_carries_every_field_with_the_time_in_utc():
    sent = body(notice())
    assert sent["occurred_at"] == "2026-03-01T12:00:00+00:00"
    assert sent["idempotency_key"] == "3f2b1c9e-5d4a-4e8f-9b7c-1a2b3c4d5e6f:2"
    assert set(sent) == {
        "text", "alert_id", "rule", "severity", "subject", "state", "action", "step", "summary", "actor", "occurred_at",
        "idempotency_key",
    }  # fmt: skip


def test_headers_name_the_alert_step_and_stay_printable_ascii():
    sent = headers(notice(alert_id="odd id\n\u00e9"))
    assert sent["X-Alert-Step"] == "2"
    assert sent["Idempotency-Key"] == "odd%20id%0A%C3%A9:2"
    assert all(value.isascii() and value.isprintable() for value in sent.values())


def test_the_backoff_doubles_from_the_first_delay_up_to_the_cap_and_honours_retry_after():
    policy = DeliveryPolicy(backoff=2.0, backoff_max=30.0)
    assert [policy.delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay(1, retry_after=10.0) == 10.0
    assert policy.delay(1, retry_after=3600.0) == 30.0  # a receiver cannot park a notice for an hour


def test_a_severity_without_its_own_webhook_goes_to_the_default_or_nowhere():
    routes = WebhookRoutes("https://a.example/d", {"critical": "https://a.example/c"})
    assert routes.url_for("critical") == "https://a.example/c"
    assert routes.url_for("warning") == "https://a.example/d"
    assert WebhookRoutes(None, {"critical": "https://a.example/c"}).url_for("warning") is None
    assert not WebhookRoutes().enabled


def test_the_settings_route_each_severity_and_describe_them_redacted():
    settings = load_settings(
        alert_webhook_url="https://hooks.example.com/all/s3cret",
        alert_webhook_url_critical="https://hooks.example.com/crit/s3cret",
    )
    routes = WebhookRoutes.from_settings(settings)
    assert routes.url_for("warning") == "https://hooks.example.com/all/s3cret"
    assert routes.url_for("critical") == "https://hooks.example.com/crit/s3cret"
    assert (
        routes.describe()
        == "warning → https://hooks.example.com/***, critical → https://hooks.example.com/***"
    )


def test_every_part_of_the_url_is_masked_in_free_text():
    url = "https://hooks.example.com/services/T0/B0/s3cretTOKEN?sig=s3cretSIG%2F1"
    said = f"POST {url} failed; no hook at /services/T0/B0/s3cretTOKEN (sig s3cretSIG/1)"
    assert "s3cret" not in without_url(said, url)


@pytest.mark.parametrize(
    "value",
    [
        "ftp://hooks.example.com/s3cret",
        "hooks.example.com/s3cret",
        "https:///s3cret",
        "https://hooks.example.com:99999/s3cret",
        "https://hooks.example.com/s3cret token",
    ],
)
def test_a_bad_webhook_url_is_refused_in_one_line_that_does_not_echo_it(value):
    with pytest.raises(SettingsError) as refused:
        load_settings(alert_webhook_url_warning=value)
    message = str(refused.value)
    assert message.startswith("Invalid setting CQRS_ALERT_WEBHOOK_URL_WARNING: must be an https://")
    assert "s3cret" not in message and "\n" not in message


def test_an_empty_webhook_url_means_none():
    assert load_settings(alert_webhook_url="  ").alert_webhook_url is None
    assert not load_settings(alert_auto_restart="false").alert_auto_restart


def test_an_aware_time_is_sent_in_utc_and_a_naive_one_as_it_is():
    naive = body(notice(occurred_at=datetime(2026, 3, 1, 12, 0)))
    assert naive["occurred_at"] == "2026-03-01T12:00:00"
    assert body(notice(occurred_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC)))["occurred_at"].endswith("+00:00")
