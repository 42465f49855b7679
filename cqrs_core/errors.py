"""One error hierarchy: each error knows its category, severity, HTTP-style status and the
one sentence a person sees. Context is for logs only and never shown."""

from __future__ import annotations

from typing import Any


class CQRSError(Exception):
    category = "infrastructure"
    severity = "error"
    status = 500
    default_message = "Something went wrong on our side; try again in a moment."

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.user_message = message or self.default_message
        self.context = context
        super().__init__(self.user_message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "severity": self.severity,
            "status": self.status,
            "message": self.user_message,
        }


class ValidationError(CQRSError):
    """Input broke a field rule or a business rule; `problems` lists every one."""

    category = "validation"
    severity = "warning"
    status = 422
    default_message = "The input is not valid."

    def __init__(self, message: str | None = None, problems: list[str] | None = None, **context: Any) -> None:
        self.problems = list(problems or [])
        if message is None and self.problems:
            message = "; ".join(self.problems)
        super().__init__(message, **context)


class DomainRuleViolation(ValidationError):
    """A command is valid on its own but not allowed in the aggregate's current state."""

    status = 409


class NotFoundError(CQRSError):
    category = "not_found"
    severity = "warning"
    status = 404
    default_message = "That item does not exist."


class ConcurrencyError(CQRSError):
    """Another writer appended to the stream first (unique (stream_id, version) violated)."""

    category = "conflict"
    severity = "warning"
    status = 409
    default_message = "Someone else changed this at the same time; reload and try again."


class AuthorizationError(CQRSError):
    category = "authorization"
    severity = "warning"
    status = 403
    default_message = "You are not allowed to do that."


class RateLimitedError(CQRSError):
    category = "rate_limited"
    severity = "warning"
    status = 429

    def __init__(self, retry_after: float, **context: Any) -> None:
        self.retry_after = retry_after
        super().__init__(f"Too many commands; try again in {retry_after:.1f} s.", **context)


class TimeoutError_(CQRSError):
    category = "timeout"
    severity = "error"
    status = 504
    default_message = "The database took too long and the work was cancelled; nothing was changed."


class StaleReadError(TimeoutError_):
    """A read-your-writes query waited its whole timeout for the read model to catch up."""

    default_message = "The read model has not caught up yet; try again in a moment."


class InfrastructureError(CQRSError):
    """The database is unreachable or failed; the message never carries SQL or URLs."""

    category = "infrastructure"
    severity = "critical"
    status = 503
    default_message = "The database is unavailable right now; nothing was changed. Try again shortly."


# A friendlier public name; `TimeoutError_` avoids shadowing the builtin inside this module.
CommandTimeoutError = TimeoutError_
