"""Alerts: what the rules found wrong, open ones first, then the latest resolved; each alert's
steps with who took them and why; and, for operators and admins, acknowledge (someone is on it)
and snooze (silent until a moment, with a reason)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from cqrs_core.app import ui
from cqrs_core.app.screens.alert_deliveries import render_notifications
from cqrs_core.domain.alert import allowed_alert_actions
from cqrs_core.ops.alerts.rules import rule_title
from cqrs_core.read.queries import QueryFactory

ui.require_entry_point()

queries = QueryFactory()
user = ui.current_user()
can_operate = ui.can("operator")
RECENT = 20  # resolved alerts listed
CHOSEN = "alerts.chosen"
SNOOZES = {
    "15 minutes": timedelta(minutes=15),
    "1 hour": timedelta(hours=1),
    "4 hours": timedelta(hours=4),
    "1 day": timedelta(days=1),
    "3 days": timedelta(days=3),
}
SEVERITY_COLORS = {"critical": "#B3261E", "warning": "#B26A00"}
STATE_COLORS = {"raised": "#B3261E", "acknowledged": "#1565C0", "snoozed": "#5F6368", "resolved": "#2E7D4F"}
LABEL_LENGTH = 90  # characters of an alert's summary in the chooser

st.title("Alerts")
st.caption(
    "What the alert rules found wrong, open alerts first. An alert resolves by itself when its "
    "condition clears; acknowledge one when you are on it, or snooze it with a reason until a "
    "later time. Every step is kept with who took it and why."
)
ui.show_toasts()
if not can_operate:
    who = "Nobody is signed in" if user is None else f"You are signed in with the {user.role} role"
    st.info(
        f"{who}: you can read the alerts; acknowledging and snoozing need the operator role.",
        icon=":material/lock:",
    )


def table(rows: list[dict[str, Any]], resolved: bool) -> pd.DataFrame:
    """Alert rows as the page shows them (plain cells: a table renders no markdown)."""
    return pd.DataFrame(
        [
            {
                "Severity": a["severity"],
                "Alert": rule_title(a["rule"]),
                "Subject": a["subject"],
                "State": a["state"],
                "Raised": a["raised_at"],
                **(
                    {"Resolved": a["resolved_at"], "By": a["resolved_by"]}
                    if resolved
                    else {"Acknowledged by": a["acknowledged_by"] or "", "Snoozed until": a["snoozed_until"]}
                ),
                "Latest reason": a["last_reason"] or "",
            }
            for a in rows
        ]
    )


def draw(rows: list[dict[str, Any]], key: str, resolved: bool = False) -> None:
    when_columns = ("Raised", "Resolved") if resolved else ("Raised", "Snoozed until")
    st.dataframe(
        table(rows, resolved),
        placeholder=ui.MISSING,
        hide_index=True,
        key=key,
        height=ui.table_height(len(rows)),
        column_config={
            "Severity": ui.label_column("Severity", SEVERITY_COLORS, width=95),
            "State": ui.label_column("State", STATE_COLORS, width=120),
            "Alert": st.column_config.TextColumn(width=160),
            "Subject": st.column_config.TextColumn(width=150),
            **{c: ui.datetime_column(c, "YYYY-MM-DD HH:mm:ss") for c in when_columns},
            "Latest reason": st.column_config.TextColumn(width="large"),
        },
    )


def label(alert: dict[str, Any]) -> str:
    """An alert in the chooser: plain text (a select box renders no markdown), cut short. Not its
    state, which changes: the select box keeps showing the label it drew when the value was chosen."""
    text = f"{rule_title(alert['rule'])} · {alert['subject']} · raised {ui.when(alert['raised_at'])}"
    text = " ".join(text.split())
    return text if len(text) <= LABEL_LENGTH else text[: LABEL_LENGTH - 1] + "…"


def history_card(alert: dict[str, Any]) -> None:
    history = ui.run_query(queries.get_alert_history(alert["alert_id"]), fresh=True)
    if history is None:
        return
    st.markdown(f"**{ui.md_escape(rule_title(alert['rule']))}** on {ui.md_escape(alert['subject'])}")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "When": s["occurred_at"],
                    "Step": s["step"] + (" (automatically)" if s["automatic"] else ""),
                    "Who": s["actor"],
                    "Why": s["why"],
                    "Until": s["until"],
                }
                for s in history.steps
            ]
        ),
        placeholder=ui.MISSING,
        hide_index=True,
        key="alerts.history",
        height=ui.table_height(len(history.steps)),
        column_config={
            "When": ui.datetime_column("When", "YYYY-MM-DD HH:mm:ss", width=190),
            "Step": st.column_config.TextColumn(width=170),
            "Who": st.column_config.TextColumn(width=110),
            "Why": st.column_config.TextColumn(width="large"),
            "Until": ui.datetime_column("Until", "YYYY-MM-DD HH:mm"),
        },
    )
    st.caption(
        f"Alert {alert['alert_id']}: its correlation id in the Event explorer, whose trace lists these steps."
    )


# The form fields a step just sent, emptied at the top of the next run (a widget's value cannot
# be set once the widget is drawn): a refused step keeps what was typed, a done one starts afresh.
SENT_FIELDS = "alerts.sent_fields"


def step(make, alert_id: str, done: str, sent: str, **fields: Any) -> None:
    """Send one step (from a form's submit): refusals show where the form is; on success the page
    runs again and shows it (its query waits for the alert's read model to have the step), with
    the form's field `sent` emptied."""
    command = ui.build(make, alert_id=alert_id, correlation_id=alert_id, **fields)
    if ui.run_command(command) is not None:
        ui.announce(done)
        st.session_state[SENT_FIELDS] = sent
        st.rerun()


def empty_sent_field() -> None:
    sent = st.session_state.pop(SENT_FIELDS, None)
    if sent is not None:
        st.session_state[sent] = ""


def actions_card(alert: dict[str, Any]) -> None:
    allowed = allowed_alert_actions(alert["state"])
    if not allowed:
        return
    if not can_operate:
        st.caption(":material/lock: Acknowledging and snoozing need the operator role.")
        return
    factory = ui.commands()
    empty_sent_field()
    acknowledge, snooze = st.columns(2)
    with acknowledge.form("alerts.acknowledge", border=True):
        st.markdown("**Acknowledge**: someone is on it")
        reason = st.text_input(
            "Why", key="alerts.ack_reason", max_chars=500, placeholder="e.g. restarting the worker"
        )
        if st.form_submit_button(
            "Acknowledge", icon=":material/done:", disabled="acknowledge" not in allowed
        ):
            step(
                factory.acknowledge_alert,
                alert["alert_id"],
                "Acknowledged.",
                "alerts.ack_reason",
                reason=reason,
            )
    with snooze.form("alerts.snooze", border=True):
        st.markdown("**Snooze**: silent until then, still open")
        length = st.selectbox("For", list(SNOOZES), key="alerts.snooze_for", index=1)
        why = st.text_input(
            "Why", key="alerts.snooze_reason", max_chars=500, placeholder="e.g. a fix is deploying"
        )
        if st.form_submit_button("Snooze", icon=":material/snooze:"):
            until = datetime.now(UTC) + SNOOZES[length or "1 hour"]
            step(
                factory.snooze_alert,
                alert["alert_id"],
                f"Snoozed for {length}.",
                "alerts.snooze_reason",
                until=until,
                reason=why,
            )


alerts = ui.run_query(queries.get_alerts(recent=RECENT), fresh=True)
if alerts is not None:
    st.subheader("Open", anchor=False)
    if alerts.open:
        draw(alerts.open, "alerts.open")
    else:
        st.success(
            "No open alerts: every rule finds things as they should be.", icon=":material/check_circle:"
        )
    st.subheader("Recently resolved", anchor=False)
    if alerts.recent:
        draw(alerts.recent, "alerts.recent", resolved=True)
    else:
        st.caption("No alert has been resolved yet.")

    listed = {a["alert_id"]: a for a in [*alerts.open, *alerts.recent]}
    if listed:
        st.subheader("Steps of an alert", anchor=False)
        if st.session_state.get(CHOSEN) not in listed:
            st.session_state[CHOSEN] = next(iter(listed))
        chosen = st.selectbox("Alert", list(listed), key=CHOSEN, format_func=lambda i: label(listed[i]))
        if chosen is not None:
            alert = listed[chosen]
            history_card(alert)
            actions_card(alert)

# How the webhook notifications of these alerts went (sent, retried, failed, dropped).
render_notifications(st.session_state.runtime, actor=None if user is None else user.name)
