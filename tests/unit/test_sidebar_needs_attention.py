"""The sidebar's health line for the parts that are not healthy: one short line whatever goes
wrong (long details wrapped below the fold made the sidebar scroll), details in its tooltip."""

from cqrs_core.app.ui import md_escape, needs_attention
from cqrs_core.ops.health import ComponentHealth


def part(name: str, status: str, detail: str = "fine") -> ComponentHealth:
    return ComponentHealth(name, status, detail)  # type: ignore[arg-type]


def test_nothing_when_every_part_is_healthy():
    assert needs_attention([part("database", "healthy"), part("projections", "healthy")]) is None
    assert needs_attention([]) is None


def test_names_the_parts_that_are_not_healthy_with_each_detail_in_the_tooltip():
    line, tooltip = needs_attention(
        [
            part("database", "healthy"),
            part("projections", "degraded", "task_summary paused; alert_summary 40 s behind"),
            part("view freshness", "unhealthy", "stale: daily_stats"),
        ]
    )
    assert line == "Needs attention: projections, view freshness"
    assert tooltip.split("\n\n") == [
        "projections: " + md_escape("task_summary paused; alert_summary 40 s behind"),
        "view freshness: " + md_escape("stale: daily_stats"),
    ]
    assert "database" not in line + tooltip


def test_at_most_two_names_however_many_parts_fail():
    names = ["database", "migrations", "event log", "projections", "scheduler", "view freshness"]
    line, tooltip = needs_attention(
        [part(n, "unhealthy", "not checked: the database is unreachable") for n in names]
    )
    assert line == "Needs attention: database, migrations and 4 more"
    assert len(tooltip.split("\n\n")) == 6  # every detail is still there, in the tooltip


def test_hostile_names_and_details_are_shown_as_typed():
    hostile = "[x](https://evil) <b>bold</b> :red[alarm] $x$"
    line, tooltip = needs_attention([part(hostile, "degraded", hostile)])
    assert line == "Needs attention: " + md_escape(hostile)
    assert tooltip == f"{md_escape(hostile)}: {md_escape(hostile)}"
    assert "](https" not in line + tooltip and "<b>" not in line + tooltip
