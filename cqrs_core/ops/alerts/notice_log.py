"""The default way an alert change is told: one line in the log, its text quoted (a subject or a
reason can hold anything, newlines included)."""

from __future__ import annotations

import logging

from cqrs_core.domain.alert_notice import AlertNotice

log = logging.getLogger("cqrs_console.alerts")


def log_notice(notice: AlertNotice) -> None:
    """Log `notice`: a warning while an alert is raised or snoozed, information otherwise."""
    level = (
        logging.WARNING if notice.state in ("raised", "snoozed") and notice.action is None else logging.INFO
    )
    log.log(
        level,
        "alert %s (%s) %s: %r on %r, step %d by %r: %r",
        notice.alert_id,
        notice.severity,
        notice.state,
        notice.rule,
        notice.subject,
        notice.step,
        notice.actor,
        notice.summary,
    )
