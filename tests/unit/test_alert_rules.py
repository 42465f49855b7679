"""The alert rules are pure functions over one snapshot of facts: each finds its condition at its
threshold, names the subject, and says "cannot tell" (None) when its facts could not be read."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cqrs_core.infra.config import Settings
from cqrs_core.ops.alerts.rules import (
    RULES,
    Condition,
    DatabaseFacts,
    Facts,
    Limits,
    ProjectionFacts,
    Rule,
    ViewFacts,
    reported,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
UP = DatabaseFacts(True, probe_ms=2.0)
CAUGHT_UP = ProjectionFacts(
    name="workflow_summary",
    state="running",
    desired_state="running",
    position=100,
    head=100,
    lag_events=0,
    lag_seconds=0.0,
    parked=0,
    idle_seconds=3600.0,
)


def facts(*projections: ProjectionFacts, **kw) -> Facts:
    return Facts(NOW, kw.pop("database", UP), projections=projections, **kw)


def check(rule: str, f: Facts, **limits) -> list[Condition] | None:
    base = RULES[rule].limits(Settings())
    return RULES[rule].check(f, replace(base, **limits))


def subjects(found: list[Condition] | None) -> list[str]:
    assert found is not None
    return [c.subject for c in found]


def test_every_rule_takes_its_threshold_and_hold_from_the_settings():
    settings = Settings(alert_lag_seconds=7, alert_lag_hold_seconds=9, alert_stalled_seconds=11)
    assert RULES["projection_lag"].limits(settings) == Limits(7, 9)
    assert RULES["projection_stalled"].limits(settings).threshold == 11
    for name, rule in RULES.items():
        assert rule.name == name and rule.severity in ("warning", "critical")
        assert rule.limits(Settings()).hold_seconds >= 0


def test_faulted_names_the_projection_and_quotes_its_error():
    faulted = replace(CAUGHT_UP, state="faulted", last_error="ProjectionError: x\nat position 7")
    found = check("projection_faulted", facts(faulted, replace(CAUGHT_UP, name="task_summary")))
    assert subjects(found) == ["workflow_summary"]
    assert "ProjectionError: x at position 7" in found[0].summary


def test_a_dead_reader_behind_the_head_is_stalled_once_nothing_moved_for_the_threshold():
    dead = replace(CAUGHT_UP, head=140, lag_events=40, lag_seconds=31.0, idle_seconds=31.0)
    assert subjects(check("projection_stalled", facts(dead), threshold=30)) == ["workflow_summary"]
    # Not yet: the oldest waiting event is younger than the threshold (an idle projection that
    # just got an event), or the checkpoint moved recently (catching up).
    assert check("projection_stalled", facts(replace(dead, lag_seconds=2.0)), threshold=30) == []
    assert check("projection_stalled", facts(replace(dead, idle_seconds=1.0)), threshold=30) == []
    # Caught up, however long ago it last moved, is not stalled.
    assert check("projection_stalled", facts(CAUGHT_UP), threshold=30) == []


def test_paused_and_faulted_projections_are_not_stalled_nor_lagging():
    behind = replace(CAUGHT_UP, head=140, lag_events=40, lag_seconds=100.0, idle_seconds=100.0)
    for held in (replace(behind, desired_state="paused", state="paused"), replace(behind, state="faulted")):
        assert check("projection_stalled", facts(held), threshold=30) == []
        assert check("projection_lag", facts(held), threshold=30) == []


def test_lag_over_the_threshold():
    assert check("projection_lag", facts(replace(CAUGHT_UP, lag_seconds=60.0)), threshold=60) == []
    found = check("projection_lag", facts(replace(CAUGHT_UP, lag_seconds=61.0, lag_events=5)), threshold=60)
    assert subjects(found) == ["workflow_summary"] and "61 s behind (5 events)" in found[0].summary


def test_parked_events_over_the_threshold():
    assert check("parked_events", facts(CAUGHT_UP), threshold=0) == []
    assert subjects(check("parked_events", facts(replace(CAUGHT_UP, parked=1)), threshold=0)) == [
        "workflow_summary"
    ]
    assert check("parked_events", facts(replace(CAUGHT_UP, parked=3)), threshold=3) == []


def test_a_view_older_than_the_threshold_is_stale_and_one_never_refreshed_is_not():
    views = (
        ViewFacts("stats_task_kind", 700.0),
        ViewFacts("stats_assignee_load", 10.0),
        ViewFacts("x", None),
    )
    assert subjects(check("view_stale", facts(views=views), threshold=600)) == ["stats_task_kind"]


def test_database_unreachable_and_slow():
    down = facts(database=DatabaseFacts(False, error="OperationalError: Connection refused"))
    found = check("database_unreachable", down)
    assert subjects(found) == ["database"] and "Connection refused" in found[0].summary
    assert check("database_unreachable", facts()) == []
    # Slow cannot be told while unreachable: its alert is left as it is.
    assert check("database_slow", down) is None
    assert check("database_slow", facts(database=DatabaseFacts(True, 499.0)), threshold=500) == []
    assert subjects(check("database_slow", facts(database=DatabaseFacts(True, 501.0)), threshold=500)) == [
        "database"
    ]


def test_missed_runs_count_within_the_window():
    missed = {"lag-sampler": (NOW - timedelta(seconds=700), NOW - timedelta(seconds=10)), "view-refresh": ()}
    f = facts(missed_runs=missed)
    found = check("scheduler_missed_runs", f, threshold=0, window_seconds=600)
    assert subjects(found) == ["lag-sampler"] and "missed 1 run in the last 600 s" in found[0].summary
    assert check("scheduler_missed_runs", f, threshold=1, window_seconds=600) == []
    assert subjects(check("scheduler_missed_runs", f, threshold=1, window_seconds=800)) == ["lag-sampler"]


@pytest.mark.parametrize(
    "rule", ["projection_faulted", "projection_stalled", "projection_lag", "parked_events"]
)
def test_projection_rules_cannot_tell_without_projection_facts(rule):
    assert check(rule, Facts(NOW, UP, projections=None)) is None


def test_view_and_scheduler_rules_cannot_tell_without_their_facts():
    assert check("view_stale", Facts(NOW, UP)) is None
    assert check("scheduler_missed_runs", Facts(NOW, UP)) is None


def test_a_rule_fed_from_outside_checks_what_its_gather_reported():
    drift = Rule(
        "read_model_drift",
        "Read model drift",
        "critical",
        lambda s: Limits(0, 0),
        reported("read_model_drift"),
    )
    found = (Condition("task_summary", "rows differ"),)
    assert drift.check(facts(reported={"read_model_drift": found}), Limits(0, 0)) == list(found)
    assert drift.check(facts(), Limits(0, 0)) is None  # its gather failed: cannot tell
