"""One error hierarchy: each error knows its category, severity, HTTP-style status and the
one sentence a person sees. Context is for logs only and never shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pydantic


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


def validation_error_from(exc: pydantic.ValidationError) -> ValidationError:
    """Every field problem of a pydantic error (a command's or a query's), each as 'field: message'."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{loc.replace('_', ' ')}: {msg}" if loc else msg)
    return ValidationError(problems=problems)


class DomainRuleViolation(ValidationError):
    """A command is valid on its own but not allowed in the aggregate's current state."""

    status = 409


class CommandIdReusedError(ValidationError):
    """A command id that was already used for a different command (another actor, command type
    or content): an exact repeat returns the first result, anything else is refused."""

    status = 409

    def __init__(self, command_id: Any, **context: Any) -> None:
        super().__init__(
            f"Command id {command_id} was already used for a different command; send this one "
            "with a new command id.",
            command_id=str(command_id),
            **context,
        )


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


class BatchExceedsBurstError(RateLimitedError):
    """A batch needs more rate-limit tokens than the bucket can ever hold: waiting never helps."""

    def __init__(self, count: int, burst: int, **context: Any) -> None:
        self.retry_after = float("inf")
        CQRSError.__init__(
            self,
            f"A batch of {count:,} commands from one actor exceeds the rate limit's burst of "
            f"{burst:,}; split it into batches of at most {burst:,} commands.",
            **context,
        )


class CorruptStreamError(CQRSError):
    """A workflow's stored events cannot be replayed (an event type this version does not know, a
    payload that does not fit its event, a gap in the versions). Retrying cannot help: the
    stream needs an operator (or an upcaster), so the message names the stream and the event."""

    category = "corrupt_stream"
    severity = "critical"
    status = 500
    default_message = (
        "This workflow's stored events cannot be replayed; an operator must repair its stream first."
    )


class UnknownEventError(CorruptStreamError):
    """A stored event's type is not one this version of the code knows."""


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


class ReplicaUnavailableError(InfrastructureError):
    """The read replica is unreachable or too far behind, and CQRS_READ_REPLICA_FALLBACK=error
    forbids reading from the primary instead."""

    default_message = "The read replica is unavailable, so nothing could be read; try again in a moment."
