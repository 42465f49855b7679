"""Where continuous verification is in its round over the streams (`verification_progress`,
migration 0014): one row with the rolling cursor, the current round's counts and the last pass.

A round walks every stream of the log once, a sample per pass, in stream-id order; the cursor is
the last stream id the round has passed, so a restarted worker continues from there. When the walk
reaches the last stream the round is complete and the next one starts from the first stream."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text


@dataclass(frozen=True)
class VerificationProgress:
    """The rolling cursor, the current round and the last pass, as the Projections page shows them."""

    after_stream: str  # the last stream the current round has passed ('' = the round starts at the first)
    round_started_at: datetime | None
    round_total: int  # workflows in the read model when the round started
    round_checked: int  # streams compared by every projection in this round
    round_skipped: int  # streams passed over by some projection (events past its checkpoint)
    rounds_completed: int
    last_round_finished_at: datetime | None = None
    last_round_checked: int | None = None
    last_round_skipped: int | None = None
    last_pass_at: datetime | None = None
    last_pass_ms: float | None = None
    last_pass_checked: int | None = None
    last_pass_skipped: int | None = None
    last_pass_events: int | None = None
    last_pass_error: str | None = None

    @property
    def round_coverage(self) -> float:
        """The share of the round's total already checked (0 to 1)."""
        return min(1.0, self.round_checked / self.round_total) if self.round_total else 0.0


_FIELDS = ", ".join(VerificationProgress.__dataclass_fields__)


def read_progress(conn: Connection) -> VerificationProgress:
    return _progress(conn.execute(text(f"SELECT {_FIELDS} FROM verification_progress")).one())


def verification_progress(engine: Engine) -> VerificationProgress:
    """The cursor, the current round and the last pass."""
    with engine.connect() as conn:
        return read_progress(conn)


def _progress(row: Any) -> VerificationProgress:
    return VerificationProgress(**row._mapping)


def read_models_total(conn: Connection) -> int:
    """What a round's coverage counts against: the workflows in the read model now."""
    return int(conn.execute(text("SELECT count(*) FROM workflow_summary")).scalar_one())


def record_pass(
    conn: Connection,
    *,
    started_after: str,
    after_stream: str,
    round_done: bool,
    checked: int,
    skipped: int,
    events: int,
    ms: float,
    next_total: int,
) -> bool:
    """In the caller's transaction: move the cursor to `after_stream` and count the pass into
    the round; a finished round (`round_done`) is counted complete and the next starts at the
    first stream, counted against `next_total`. Nothing changes (False) if another pass moved the
    cursor since this one read it at `started_after`."""
    return bool(
        conn.execute(
            text(
                """
                UPDATE verification_progress SET
                    after_stream = CASE WHEN :done THEN '' ELSE :after END,
                    round_checked = CASE WHEN :done THEN 0 ELSE round_checked + :checked END,
                    round_skipped = CASE WHEN :done THEN 0 ELSE round_skipped + :skipped END,
                    round_started_at = CASE WHEN :done THEN clock_timestamp()
                                            ELSE COALESCE(round_started_at, clock_timestamp()) END,
                    round_total = CASE WHEN :done OR round_started_at IS NULL THEN :total ELSE round_total END,
                    rounds_completed = rounds_completed + CASE WHEN :done THEN 1 ELSE 0 END,
                    last_round_finished_at = CASE WHEN :done THEN clock_timestamp() ELSE last_round_finished_at END,
                    last_round_checked = CASE WHEN :done THEN round_checked + :checked ELSE last_round_checked END,
                    last_round_skipped = CASE WHEN :done THEN round_skipped + :skipped ELSE last_round_skipped END,
                    last_pass_at = clock_timestamp(), last_pass_ms = :ms, last_pass_checked = :checked,
                    last_pass_skipped = :skipped, last_pass_events = :events, last_pass_error = NULL
                WHERE after_stream = :started
                """
            ),
            {
                "done": round_done,
                "after": after_stream,
                "checked": checked,
                "skipped": skipped,
                "events": events,
                "ms": ms,
                "total": next_total,
                "started": started_after,
            },
        ).rowcount
    )


def record_failure(engine: Engine, error: str) -> None:
    """A pass that failed: when, and the one line saying why (the cursor stays)."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE verification_progress SET last_pass_at = clock_timestamp(), last_pass_error = :e"),
            {"e": error[:500]},
        )
