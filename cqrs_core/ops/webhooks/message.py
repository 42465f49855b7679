"""What a webhook receives for one alert notice: a JSON body whose `text` is one line Slack (and
Teams, and most chat webhooks) shows as is, followed by the notice's fields for receivers that
read them, and headers that let a receiver drop a repeat (`Idempotency-Key`)."""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import Any
from urllib.parse import quote

from cqrs_core.domain.alert_notice import AlertNotice

# Longest `text` line sent; a longer summary is cut (Slack takes 40,000 characters, Teams less).
TEXT_LIMIT = 2000
# Slack reads `<...>` as a link or a mention (`<!channel>`) and `&` as an entity: the three
# characters it asks senders to escape, nothing else (https://api.slack.com/reference/surfaces/formatting).
_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_BREAKS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
USER_AGENT = "research-workflow-console-alerts"


def one_line(value: str) -> str:
    """`value` on one line: line breaks and other control characters become one space."""
    return _BREAKS.sub(" ", value).strip()


def text_line(notice: AlertNotice) -> str:
    """The Slack-compatible line: "[CRITICAL] projection_stalled · workflow_summary · raised: <summary>".
    An action the evaluator took shows instead of the state ("· action auto_restart:"), so that the
    line does not read as the alert being raised again.
    What the alert says is text, never markup: no mention, link or formatting reaches the channel."""
    what = notice.state if notice.action is None else f"action {notice.action}"
    line = one_line(
        f"[{notice.severity.upper()}] {notice.rule} · {notice.subject} · {what}: {notice.summary}"
    )
    if len(line) > TEXT_LIMIT:
        line = line[: TEXT_LIMIT - 1] + "…"
    return line.translate(_SLACK_ESCAPES)


def delivery_key(notice: AlertNotice) -> str:
    """The notice's identity for receivers: one per alert and state change."""
    return f"{notice.alert_id}:{notice.step}"


def body(notice: AlertNotice) -> dict[str, Any]:
    """The JSON object POSTed: `text` plus every field of the notice (time in UTC, ISO 8601)."""
    occurred = notice.occurred_at
    if occurred.tzinfo is not None:
        occurred = occurred.astimezone(UTC)
    return {
        "text": text_line(notice),
        "alert_id": notice.alert_id,
        "rule": notice.rule,
        "severity": notice.severity,
        "subject": notice.subject,
        "state": notice.state,
        "action": notice.action,  # null unless this change is an action (the state is unchanged)
        "step": notice.step,
        "summary": notice.summary,
        "actor": notice.actor,
        "occurred_at": occurred.isoformat(),
        "idempotency_key": delivery_key(notice),
    }


def encoded_body(notice: AlertNotice) -> bytes:
    return json.dumps(body(notice), ensure_ascii=False).encode()


def headers(notice: AlertNotice) -> dict[str, str]:
    """The same key in every try of one notice, so a receiver that got it twice can tell. Header
    values are printable ASCII: anything else in an alert id is percent-encoded."""
    alert_id = quote(notice.alert_id, safe="-._~:")
    return {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": f"{alert_id}:{notice.step}",
        "X-Alert-Id": alert_id,
        "X-Alert-Step": str(notice.step),
    }
