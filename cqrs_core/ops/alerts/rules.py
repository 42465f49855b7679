"""The alert rules: each a pure function over one snapshot of facts, with its threshold and hold
from the settings. A rule returns the conditions it finds now, one per subject (a projection, a
view, the database, a scheduler job), or None when the facts it needs could not be read (the
database is down): its open alerts then stay as they are, neither raised nor resolved.

Adding a rule is one entry in `RULES`. A rule about something the standard facts do not cover
(continuous verification's drift, say) brings its own `gather`: a function of the database
engine returning the conditions found (e.g. one per open drift finding), whose result the gatherer puts in `facts.reported`
under the rule's name; its `check` is then `reported(name)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from cqrs_core.domain.vocabulary import AlertSeverity
from cqrs_core.infra.config import Settings
from cqrs_core.projections.engine import drift_findings

SUBJECT_DATABASE = "database"
DRIFT_SUBJECTS = 50  # open drift findings raised as alerts at most (newest first)
MAX_DETAIL = 300  # characters of quoted text (a projection's last error) in a summary


# ---------------------------------------------------------------- facts


@dataclass(frozen=True)
class DatabaseFacts:
    reachable: bool
    probe_ms: float | None = None  # the probe query's round trip (None when unreachable)
    error: str | None = None  # why it could not be reached, one line


@dataclass(frozen=True)
class ProjectionFacts:
    name: str
    state: str  # ProjectionStatus.state
    desired_state: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float  # age of the oldest event it has not applied
    parked: int
    idle_seconds: float  # since its checkpoint last moved
    last_error: str | None = None


@dataclass(frozen=True)
class ViewFacts:
    name: str
    age_seconds: float | None  # None: not refreshed yet


@dataclass(frozen=True)
class Condition:
    """What a rule finds wrong now about one subject, in one sentence."""

    subject: str
    summary: str


@dataclass(frozen=True)
class Facts:
    """One snapshot of what the rules look at. None: could not be read this time."""

    at: datetime
    database: DatabaseFacts
    projections: tuple[ProjectionFacts, ...] | None = None
    views: tuple[ViewFacts, ...] | None = None
    # Per scheduler job of the evaluating process: when its runs were missed.
    missed_runs: Mapping[str, tuple[datetime, ...]] | None = None
    # What the rules with a `gather` of their own found, by rule name (absent: not read).
    reported: Mapping[str, tuple[Condition, ...]] = field(default_factory=dict)


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class Limits:
    threshold: float  # the rule's number: seconds, events or milliseconds (0 where it has none)
    hold_seconds: float  # how long the condition must last before the alert is raised
    window_seconds: float = 0.0  # for rules that count within a window


Check = Callable[[Facts, Limits], list[Condition] | None]


@dataclass(frozen=True)
class Rule:
    name: str
    title: str  # a few words for people: "Projection stalled"
    severity: AlertSeverity
    limits: Callable[[Settings], Limits]
    check: Check
    gather: Callable[[Engine], Sequence[Condition]] | None = None


def _clip(text: str | None) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _running(p: ProjectionFacts) -> bool:
    """Meant to be applying events: not paused by an operator, not stopped at a fault (which
    has a rule of its own)."""
    return p.desired_state != "paused" and p.state not in ("paused", "faulted")


def projection_faulted(facts: Facts, _limits: Limits) -> list[Condition] | None:
    if facts.projections is None:
        return None
    return [
        Condition(
            p.name,
            f"Projection {p.name} stopped at an event it cannot apply ({_clip(p.last_error) or 'no error recorded'}); "
            "fix the cause, then resume it or discard the parked event.",
        )
        for p in facts.projections
        if p.state == "faulted"
    ]


def projection_stalled(facts: Facts, limits: Limits) -> list[Condition] | None:
    """Behind the log's head and not moving: its checkpoint has not moved for the threshold while
    the oldest event it has not applied is at least as old. Measured against the head and the
    checkpoint's own clock, not a lag the reader reports, so a dead reader is caught too."""
    if facts.projections is None:
        return None
    found = []
    for p in facts.projections:
        stuck = min(p.idle_seconds, p.lag_seconds)
        if _running(p) and p.position < p.head and stuck >= limits.threshold:
            found.append(
                Condition(
                    p.name,
                    f"Projection {p.name} has not moved for {stuck:,.0f} s while {p.lag_events:,} events wait "
                    f"(at position {p.position:,}, head {p.head:,}); check that a worker runs it.",
                )
            )
    return found


def projection_lag(facts: Facts, limits: Limits) -> list[Condition] | None:
    if facts.projections is None:
        return None
    return [
        Condition(
            p.name,
            f"Projection {p.name} is {p.lag_seconds:,.0f} s behind ({p.lag_events:,} events), "
            f"more than {limits.threshold:,.0f} s.",
        )
        for p in facts.projections
        if _running(p) and p.lag_seconds > limits.threshold
    ]


def parked_events(facts: Facts, limits: Limits) -> list[Condition] | None:
    if facts.projections is None:
        return None
    return [
        Condition(
            p.name,
            f"Projection {p.name} has {p.parked:,} parked event{'s' if p.parked != 1 else ''}; "
            "retry or discard them on the Projections page.",
        )
        for p in facts.projections
        if p.parked > limits.threshold
    ]


def view_stale(facts: Facts, limits: Limits) -> list[Condition] | None:
    if facts.views is None:
        return None
    return [
        Condition(
            v.name,
            f"Statistics view {v.name} was last refreshed {v.age_seconds:,.0f} s ago, "
            f"more than {limits.threshold:,.0f} s.",
        )
        for v in facts.views
        if v.age_seconds is not None and v.age_seconds > limits.threshold
    ]


def database_unreachable(facts: Facts, _limits: Limits) -> list[Condition] | None:
    if facts.database.reachable:
        return []
    return [
        Condition(
            SUBJECT_DATABASE,
            f"The database cannot be reached ({_clip(facts.database.error) or 'no answer'}).",
        )
    ]


def database_slow(facts: Facts, limits: Limits) -> list[Condition] | None:
    db = facts.database
    if not db.reachable or db.probe_ms is None:
        return None  # unreachable has its own rule; whether it is slow cannot be told
    if db.probe_ms <= limits.threshold:
        return []
    return [
        Condition(
            SUBJECT_DATABASE,
            f"The database answered a probe query in {db.probe_ms:,.0f} ms, more than {limits.threshold:,.0f} ms.",
        )
    ]


def scheduler_missed_runs(facts: Facts, limits: Limits) -> list[Condition] | None:
    if facts.missed_runs is None:
        return None
    since = facts.at - timedelta(seconds=limits.window_seconds)
    found = []
    for job, times in sorted(facts.missed_runs.items()):
        missed = sum(1 for t in times if t >= since)
        if missed > limits.threshold:
            found.append(
                Condition(
                    job,
                    f"Scheduler job {job} missed {missed} run{'s' if missed != 1 else ''} in the last "
                    f"{limits.window_seconds:,.0f} s; the process running it is overloaded.",
                )
            )
    return found


def reported(name: str) -> Check:
    """The check of a rule fed by its own `gather`: what it reported, as it reported it."""

    def check(facts: Facts, _limits: Limits) -> list[Condition] | None:
        found = facts.reported.get(name)
        return None if found is None else list(found)

    return check


def drift_conditions(engine: Engine) -> list[Condition]:
    """Continuous verification's open findings (projections/engine/continuous_verify.py), one
    condition per projection and stream, naming the differing columns."""
    return [
        Condition(f"{f.projection}/{f.stream_id}", _clip(f.describe()))
        for f in drift_findings.open_drift_findings(engine, limit=DRIFT_SUBJECTS)
    ]


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "projection_faulted",
            "Projection faulted",
            "critical",
            lambda s: Limits(0, s.alert_faulted_hold_seconds),
            projection_faulted,
        ),
        Rule(
            "projection_stalled",
            "Projection stalled",
            "critical",
            lambda s: Limits(s.alert_stalled_seconds, s.alert_stalled_hold_seconds),
            projection_stalled,
        ),
        Rule(
            "projection_lag",
            "Projection lagging",
            "warning",
            lambda s: Limits(s.alert_lag_seconds, s.alert_lag_hold_seconds),
            projection_lag,
        ),
        Rule(
            "parked_events",
            "Parked events",
            "warning",
            lambda s: Limits(s.alert_parked_events, s.alert_parked_hold_seconds),
            parked_events,
        ),
        Rule(
            "view_stale",
            "Statistics view stale",
            "warning",
            lambda s: Limits(s.alert_view_age_seconds, s.alert_view_age_hold_seconds),
            view_stale,
        ),
        Rule(
            "database_unreachable",
            "Database unreachable",
            "critical",
            lambda s: Limits(0, s.alert_database_unreachable_hold_seconds),
            database_unreachable,
        ),
        Rule(
            "database_slow",
            "Database slow",
            "warning",
            lambda s: Limits(s.alert_database_slow_ms, s.alert_database_slow_hold_seconds),
            database_slow,
        ),
        Rule(
            "scheduler_missed_runs",
            "Scheduler missed runs",
            "warning",
            lambda s: Limits(
                s.alert_missed_runs, s.alert_missed_runs_hold_seconds, s.alert_missed_runs_window_seconds
            ),
            scheduler_missed_runs,
        ),
        Rule(
            "read_model_drift",
            "Read model drift",
            "critical",
            lambda s: Limits(0, 0),
            reported("read_model_drift"),
            gather=drift_conditions,
        ),
    )
}
RULE_NAMES: tuple[str, ...] = tuple(RULES)


def rule_title(name: str) -> str:
    """A rule's few words for people ("Projection stalled"); a rule this code does not know (an
    alert raised through the API) by its name."""
    rule = RULES.get(name)
    return rule.title if rule is not None else name
