"""Which webhook an alert notification goes to: the URL set for its severity, else the default
one, else none (that severity is not sent). The URLs carry tokens: anything shown goes through
`redact()`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import redact

# The severities that have a URL setting of their own (CQRS_ALERT_WEBHOOK_URL_<SEVERITY>).
SEVERITY_SETTINGS: Mapping[str, str] = {
    "warning": "alert_webhook_url_warning",
    "critical": "alert_webhook_url_critical",
}
# Every setting that holds a webhook URL: shown only redacted (the System page, the health line).
URL_SETTINGS: tuple[str, ...] = ("alert_webhook_url", *SEVERITY_SETTINGS.values())


@dataclass(frozen=True)
class WebhookRoutes:
    """The webhook URL of each severity. `default` serves the severities without one of their own."""

    default: str | None = None
    by_severity: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookRoutes:
        own = {severity: getattr(settings, name) for severity, name in SEVERITY_SETTINGS.items()}
        return cls(settings.alert_webhook_url, {s: url for s, url in own.items() if url})

    @property
    def enabled(self) -> bool:
        """Whether any notification is sent at all."""
        return bool(self.default or self.by_severity)

    def url_for(self, severity: str) -> str | None:
        """Where a notification of `severity` goes; None: it is not sent."""
        return self.by_severity.get(severity) or self.default

    def shown(self) -> dict[str, str | None]:
        """Each known severity's webhook as a person may see it (redacted), None where not sent."""
        severities = dict.fromkeys([*SEVERITY_SETTINGS, *self.by_severity])
        return {s: (redact(url) if (url := self.url_for(s)) else None) for s in severities}

    def describe(self) -> str:
        """One line: where each severity goes, e.g. "warning → https://hooks.slack.com/***, critical → not sent"."""
        return ", ".join(f"{s} → {url or 'not sent'}" for s, url in self.shown().items())


# Parts of a URL shorter than this are not worth masking in free text (they would mask common words).
_MASKED_PART_MIN = 6


def without_url(text: str, url: str) -> str:
    """`text` (an error message, a receiver's answer) with every trace of `url`'s secrets masked:
    the URL itself, its path and query, and each longer path segment and query value, as written
    and percent-decoded. A 404 page that echoes the requested path must not show the token."""
    parts = urlsplit(url)
    secrets = {url, parts.path, parts.query, parts.netloc}
    secrets.update(segment for segment in parts.path.split("/"))
    secrets.update(value for _, value in parse_qsl(parts.query, keep_blank_values=True))
    if "@" in parts.netloc:
        secrets.add(parts.netloc.rsplit("@", 1)[0])
    candidates = {s for secret in secrets for s in (secret, unquote(secret)) if len(s) >= _MASKED_PART_MIN}
    for secret in sorted(candidates, key=len, reverse=True):  # the whole URL before its parts
        text = text.replace(secret, "***")
    return text
