"""The delivery records (`alert_deliveries`, migration 0013): one row per alert and step, saying
where the notification went (the redacted URL), how it went and how many tries it took. The
notifier writes them; the Alerts page reads them through the query bus
(`read/handlers/alert_deliveries.py`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Engine, text

from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.domain.vocabulary import AlertDeliveryStatus as DeliveryStatus
from cqrs_core.infra.db import redact

# Statements here are one-row writes and lookups: anything slower means the database is in trouble,
# and the delivery thread must get back to sending.
STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class DeliveryRecord:
    """The state of one notification's delivery, as one row."""

    alert_id: str
    step: int
    rule: str
    severity: str
    subject: str
    alert_state: str
    summary: str
    occurred_at: datetime
    url: str  # redacted
    status: DeliveryStatus
    attempts: int
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None

    @classmethod
    def of(
        cls, notice: AlertNotice, url: str, status: DeliveryStatus, attempts: int, **when: object
    ) -> DeliveryRecord:
        """The record of `notice` sent to `url` (stored redacted: never its token)."""
        return cls(
            alert_id=notice.alert_id,
            step=notice.step,
            rule=notice.rule,
            severity=notice.severity,
            subject=notice.subject,
            alert_state=notice.state,
            summary=notice.summary,
            occurred_at=notice.occurred_at,
            url=redact(url),
            status=status,
            attempts=attempts,
            **when,  # type: ignore[arg-type]
        )


# A delivered row stays delivered: a late write from another try (another process) never undoes it.
_UPSERT = text(
    f"""
    SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS};
    INSERT INTO public.alert_deliveries AS d
        (alert_id, step, rule, severity, subject, alert_state, summary, occurred_at, url, status,
         attempts, last_error, last_attempt_at, next_attempt_at, delivered_at, updated_at)
    VALUES (:alert_id, :step, :rule, :severity, :subject, :alert_state, :summary, :occurred_at, :url,
            :status, :attempts, :last_error, :last_attempt_at, :next_attempt_at, :delivered_at,
            clock_timestamp())
    ON CONFLICT (alert_id, step) DO UPDATE SET
        url = EXCLUDED.url, status = EXCLUDED.status,
        attempts = GREATEST(d.attempts, EXCLUDED.attempts), last_error = EXCLUDED.last_error,
        last_attempt_at = EXCLUDED.last_attempt_at, next_attempt_at = EXCLUDED.next_attempt_at,
        delivered_at = EXCLUDED.delivered_at, updated_at = clock_timestamp()
    WHERE d.status <> 'delivered'
    """
)
_DELIVERED = text(
    f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}; "
    "SELECT 1 FROM public.alert_deliveries WHERE alert_id = :alert_id AND step = :step AND status = 'delivered'"
)


def save(engine: Engine, records: Iterable[DeliveryRecord]) -> None:
    """Write `records` (the latest state of each delivery) in one transaction."""
    rows = [asdict(r) for r in records]
    if rows:
        with engine.begin() as conn:
            conn.execute(_UPSERT, rows)


def was_delivered(engine: Engine, alert_id: str, step: int) -> bool:
    """Whether this alert's step reached its webhook already (in any process, before any restart)."""
    with engine.begin() as conn:
        return conn.execute(_DELIVERED, {"alert_id": alert_id, "step": step}).first() is not None


def outcomes_since(engine: Engine, since: datetime) -> tuple[dict[str, int], str | None]:
    """How many deliveries ended in each status since `since`, and the newest failure's error."""
    with engine.begin() as conn:
        counts = conn.execute(
            text(
                f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}; "
                "SELECT status, count(*) FROM public.alert_deliveries WHERE updated_at >= :since GROUP BY status"
            ),
            {"since": since},
        ).all()
        newest = conn.execute(
            text(
                "SELECT last_error FROM public.alert_deliveries WHERE updated_at >= :since "
                "AND status IN ('failed', 'dropped') ORDER BY updated_at DESC LIMIT 1"
            ),
            {"since": since},
        ).scalar()
    return {status: int(n) for status, n in counts}, newest
