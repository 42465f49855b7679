"""The Alerts page's "Notifications" section: where alert changes are sent (webhook URLs redacted),
how many were delivered, are being retried, failed or were dropped lately, and the newest ones
with their tries and last error. The notifier that sends them runs where the alerts are evaluated
(`cqrs_core/ops/webhooks`); this section reads its delivery records through the query bus."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.app.runtime import AppRuntime
from cqrs_core.infra.errors import CQRSError
from cqrs_core.ops.webhooks.routes import WebhookRoutes
from cqrs_core.read.queries import QueryFactory
from cqrs_core.read.results import AlertDeliveries

log = logging.getLogger("cqrs_console.ui")

Q = QueryFactory()
SHOWN = 50  # notifications listed
WINDOW_HOURS = 24  # the counts' window
FAILURES = ["failed", "dropped"]
KEY = "notifications"  # widget keys of this section start with it
COLUMNS = [
    "Changed",
    "Rule",
    "Subject",
    "Severity",
    "Alert",
    "Step",
    "Delivery",
    "Tries",
    "Last error",
    "Webhook",
]
DELIVERY_COLORS = {"delivered": "green", "sending": "orange", "failed": "red", "dropped": "red"}
DELIVERY_WORDS = {
    "delivered": "Delivered",
    "sending": "Being retried",
    "failed": "Failed",
    "dropped": "Dropped",
}


def render_notifications(rt: AppRuntime, *, actor: str | None = None) -> None:
    """Draw the section. `actor` (the signed-in user) is charged the query's rate limit."""
    st.subheader("Notifications")
    routes = WebhookRoutes.from_settings(rt.settings)
    if routes.enabled:
        st.caption(f"Alert changes are sent to: {ui.md_escape(routes.describe())}.")
    else:
        st.info(
            "Notifications are off: set CQRS_ALERT_WEBHOOK_URL (or CQRS_ALERT_WEBHOOK_URL_WARNING and "
            "CQRS_ALERT_WEBHOOK_URL_CRITICAL) to a Slack, Teams or other webhook to be told of alerts.",
            icon=":material/notifications_off:",
        )
    failures_only = st.toggle("Only notifications that were not delivered", key=f"{KEY}.failures_only")
    result = _deliveries(rt, actor, FAILURES if failures_only else None)
    if result is None:
        return
    _counts(result)
    if not result.deliveries:
        st.caption("None not delivered." if failures_only else "No alert notification has been sent yet.")
        return
    st.dataframe(
        _rows(result),
        placeholder=ui.MISSING,
        hide_index=True,
        height=ui.table_height(len(result.deliveries)),
        column_config={"Delivery": ui.label_column("Delivery", DELIVERY_COLORS)},
        key=f"{KEY}.table",
    )


def _deliveries(rt: AppRuntime, actor: str | None, status: list[str] | None) -> AlertDeliveries | None:
    try:
        return rt.service.execute_query(
            Q.get_alert_deliveries(status=status, limit=SHOWN, hours=WINDOW_HOURS), actor=actor
        )
    except CQRSError as exc:
        st.error(ui.md_escape(exc.user_message), icon=":material/error:")
    except Exception:  # a bug: the traceback goes to the log, the person sees one sentence
        log.exception("reading the alert notifications failed")
        st.error("Something went wrong on our side; the server log has the details.", icon=":material/error:")
    return None


def _counts(result: AlertDeliveries) -> None:
    with ui.wrapping_row():
        for status, word in DELIVERY_WORDS.items():
            st.metric(f"{word} (last {WINDOW_HOURS} h)", result.counts.get(status, 0))
    missed = result.counts.get("failed", 0) + result.counts.get("dropped", 0)
    if missed:
        newest = next((d for d in result.deliveries if d["status"] in FAILURES), None)
        reason = (
            f" The newest: {ui.md_escape(newest['last_error'])}" if newest and newest["last_error"] else ""
        )
        st.warning(
            f"{missed} alert notification(s) of the last {WINDOW_HOURS} hours did not reach their webhook; "
            f"check the URL and the receiving service.{reason}",
            icon=":material/warning:",
        )


def _rows(result: AlertDeliveries) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Changed": ui.when(d["occurred_at"]),
                "Rule": d["rule"],
                "Subject": d["subject"],
                "Severity": d["severity"],
                "Alert": d["alert_state"],
                "Step": d["step"],
                "Delivery": d["status"],
                "Tries": d["attempts"],
                "Last error": d["last_error"] or "",
                "Webhook": d["url"],
            }
            for d in result.deliveries
        ],
        columns=COLUMNS,
    )
