"""Alert notifications: every state change of an alert (`domain.alert_notice.AlertNotice`) POSTed as
JSON to the webhook its severity is routed to, from a thread of its own, retried with backoff, at
most once per alert and step (`alert_deliveries`, migration 0013).

* `routes.py`: which webhook URL each severity goes to (settings), and how the URLs are shown;
* `message.py`: the JSON body (a Slack-compatible `text` line plus the notice's fields) and headers;
* `records.py`: the delivery records' SQL;
* `notifier.py`: `WebhookNotifier`, whose `submit` never blocks, and `open_notifier`;
* `check.py`: the health report's "notifications" line.
"""

from cqrs_core.ops.webhooks.notifier import DeliveryPolicy, NotifierStatus, WebhookNotifier, open_notifier
from cqrs_core.ops.webhooks.routes import WebhookRoutes

__all__ = ["DeliveryPolicy", "NotifierStatus", "WebhookNotifier", "WebhookRoutes", "open_notifier"]
