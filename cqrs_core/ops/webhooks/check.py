"""The health report's "notifications" line: where alert notifications go (redacted) and how the
last hour's deliveries went, from the delivery records every process writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from cqrs_core.infra.config import Settings
from cqrs_core.ops.health import ComponentCheck, ComponentHealth
from cqrs_core.ops.webhooks import records
from cqrs_core.ops.webhooks.routes import WebhookRoutes

# The deliveries the line counts: recent enough to matter, long enough to catch a receiver that broke.
WINDOW = timedelta(hours=1)


def notifications_check(settings: Settings) -> ComponentCheck:
    """Off (no webhook set) is healthy; a notification that failed or was dropped in the last hour
    is degraded: alerts are raised, but nobody is told."""
    routes = WebhookRoutes.from_settings(settings)

    def check_notifications(engine: Engine) -> ComponentHealth:
        if not routes.enabled:
            return ComponentHealth(
                "notifications", "healthy", "off: no webhook set (CQRS_ALERT_WEBHOOK_URL)", {"enabled": False}
            )
        counts, newest_error = records.outcomes_since(engine, datetime.now(UTC) - WINDOW)
        failed = counts.get("failed", 0) + counts.get("dropped", 0)
        metrics = {"enabled": True, **{f"{status}_last_hour": n for status, n in counts.items()}}
        detail = f"{routes.describe()}; last hour: {counts.get('delivered', 0)} delivered"
        if counts.get("sending"):
            detail += f", {counts['sending']} being retried"
        if failed:
            detail += f", {failed} not delivered (newest: {newest_error})"
            return ComponentHealth("notifications", "degraded", detail, metrics)
        return ComponentHealth("notifications", "healthy", detail, metrics)

    return check_notifications
