"""The audit timeline: every operator and admin action, performed through the service and the
demo controller, appears once with who, its parameters and its outcome (accepted, or refused and
why); the query filters by actor, action, outcome and time, newest first, a page at a time."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from cqrs_core import CommandFactory
from cqrs_core.app.demo import DemoController, inject_poison_event
from cqrs_core.infra.errors import AuthorizationError, CQRSError
from cqrs_core.ops.reset import reset
from cqrs_core.read.queries import QueryFactory

queries = QueryFactory()


def trail(service, **filters):
    return service.execute_query(queries.get_audit_trail(**filters), cache=False)


def everything(service) -> list[dict]:
    return trail(service, limit=200).entries


def parked_ids(service) -> list[int]:
    with service.engine.connect() as conn:
        return list(
            conn.execute(text("SELECT id FROM parked_events WHERE status = 'parked' ORDER BY id")).scalars()
        )


def test_each_operator_and_admin_action_appears_once_with_its_parameters_and_outcome(service):
    olga = CommandFactory(actor="olga", role="operator")
    demo = DemoController(service)

    service.execute_command(olga.pause_projection(projection="task_summary"))
    service.execute_command(olga.resume_projection(projection="task_summary"))
    service.execute_command(olga.rebuild_projection(projection="workflow_activity"))
    poison = demo.inject_poison_event(actor="olga", role="operator")
    service.projections.run_once("task_summary")  # parks the poison event
    [parked] = parked_ids(service)
    service.execute_command(olga.retry_parked_events(ids=[parked]))
    service.execute_command(olga.discard_parked_events(ids=[parked]))
    service.execute_command(olga.refresh_statistics())
    seed = demo.seed(2, role="operator", seed=7, days=3.0, actor="olga")
    deadline = time.monotonic() + 60
    while demo.seeding.running and time.monotonic() < deadline:
        time.sleep(0.05)
    demo.start_load(5.0, role="operator", actor="olga")
    demo.stop_load(role="operator", actor="olga")
    summary = demo.reset(role="admin", actor="ada")

    rows = everything(service)
    got = [(r["actor"], r["role"], r["action"], r["parameters"], r["outcome"]) for r in reversed(rows)]
    assert got == [
        ("olga", "operator", "projection.pause", {"projection": "task_summary"}, "accepted"),
        ("olga", "operator", "projection.resume", {"projection": "task_summary"}, "accepted"),
        ("olga", "operator", "projection.rebuild", {"projection": "workflow_activity"}, "accepted"),
        ("olga", "operator", "demo.poison", {}, "accepted"),
        ("olga", "operator", "parked.retry", {"ids": [parked]}, "accepted"),
        ("olga", "operator", "parked.discard", {"ids": [parked]}, "accepted"),
        ("olga", "operator", "views.refresh", {}, "accepted"),
        ("olga", "operator", "demo.seed", {"workflows": 2, "seed": 7, "days": 3.0}, "accepted"),
        ("olga", "operator", "demo.load_start", {"rate": 5.0}, "accepted"),
        ("olga", "operator", "demo.load_stop", {}, "accepted"),
        ("ada", "admin", "demo.reset", {}, "accepted"),
    ]
    by_action = {r["action"]: r for r in rows}
    assert by_action["demo.poison"]["detail"] == f"poison event at position {poison.position:,}"
    assert by_action["demo.seed"]["detail"] == f"random seed {seed}"
    assert by_action["demo.reset"]["detail"].startswith(f"deleted {summary.events:,} events")
    assert all(r["at"] is not None for r in rows)
    # The reset emptied the log and the command log, not the timeline.
    assert len(everything(service)) == 11


def test_refused_actions_appear_with_why_and_change_nothing(service):
    reader = CommandFactory(actor="rita", role="researcher")
    olga = CommandFactory(actor="olga", role="operator")
    demo = DemoController(service)

    with pytest.raises(AuthorizationError):
        service.execute_command(reader.pause_projection(projection="task_summary"))
    with pytest.raises(CQRSError) as unknown:
        service.execute_command(olga.rebuild_projection(projection="no_such_projection"))
    with pytest.raises(AuthorizationError):
        demo.reset(role="operator", actor="olga")
    with pytest.raises(AuthorizationError):
        demo.seed(5, role="researcher", actor="rita")
    with pytest.raises(AuthorizationError):
        inject_poison_event(
            service.event_store, actor="rita", role="researcher"
        )  # not through the controller
    with pytest.raises(AuthorizationError):
        demo.inject_poison_event(actor="rita", role="researcher")

    rows = list(reversed(everything(service)))
    assert [(r["actor"], r["action"], r["outcome"]) for r in rows] == [
        ("rita", "projection.pause", "refused"),
        ("olga", "projection.rebuild", "refused"),
        ("olga", "demo.reset", "refused"),
        ("rita", "demo.seed", "refused"),
        ("rita", "demo.poison", "refused"),
    ]
    assert rows[1]["detail"] == unknown.value.user_message
    assert rows[3]["parameters"] == {"workflows": 5, "seed": None, "days": 90.0}
    assert all(r["detail"] for r in rows)
    assert {s.name: s.desired_state for s in service.projections.status()}["task_summary"] == "running"
    assert service.event_store.head() == 0


def test_a_repeated_command_id_is_one_entry(service):
    cmd = CommandFactory(actor="olga", role="operator").pause_projection(projection="task_summary")
    service.execute_command(cmd)
    service.execute_command(cmd)
    assert len(everything(service)) == 1


def test_a_reset_from_the_command_line_is_on_the_timeline(service):
    reset(service.engine, actor="ops-laptop")
    [row] = everything(service)
    assert (row["actor"], row["role"], row["action"], row["outcome"]) == (
        "ops-laptop",
        "admin",
        "demo.reset",
        "accepted",
    )


def test_filters_by_actor_action_outcome_and_time_newest_first_in_pages(service):
    olga = CommandFactory(actor="olga", role="operator")
    omar = CommandFactory(actor="omar", role="operator")
    for name in ("task_summary", "workflow_summary", "workflow_activity"):
        service.execute_command(olga.pause_projection(projection=name))
        service.execute_command(omar.resume_projection(projection=name))
    with pytest.raises(AuthorizationError):
        service.execute_command(CommandFactory(actor="rita", role="researcher").refresh_statistics())

    page = trail(service, actor="olga")
    assert [r["parameters"]["projection"] for r in page.entries] == [
        "workflow_activity",
        "workflow_summary",
        "task_summary",
    ]
    assert {r["action"] for r in trail(service, actions=["projection.resume"]).entries} == {
        "projection.resume"
    }
    assert [r["actor"] for r in trail(service, outcome="refused").entries] == ["rita"]
    assert page.actors == ["olga", "omar", "rita"]
    assert "views.refresh" in page.actions

    first = trail(service, limit=4)
    second = trail(service, limit=4, before=first.next_before)
    assert len(first.entries) == 4 and len(second.entries) == 3 and second.next_before is None
    ids = [r["id"] for r in first.entries + second.entries]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7

    now = datetime.now(UTC)
    assert (
        len(trail(service, at_from=now - timedelta(minutes=5), at_to=now + timedelta(minutes=1)).entries) == 7
    )
    assert trail(service, at_to=now - timedelta(minutes=5)).entries == []


def test_a_backwards_time_range_is_refused_in_one_sentence():
    with pytest.raises(CQRSError, match="from must be on or before to"):
        queries.get_audit_trail(
            at_from=datetime(2026, 2, 1, tzinfo=UTC), at_to=datetime(2026, 1, 1, tzinfo=UTC)
        )


def test_a_flood_of_refused_operator_commands_adds_at_most_the_rate_limits_burst(db_url):
    """Refusals come before the rate limit (a role is refused first); each is on the timeline, but
    charged to the actor's limit, so a flood cannot grow the table past the burst."""
    from cqrs_core import CQRSServiceBuilder
    from cqrs_core.infra.config import load_settings

    burst = 5
    svc_limited = (
        CQRSServiceBuilder(load_settings())
        .with_database_url(db_url)
        .with_migrations(False)
        .with_rate_limit(0.001, burst)
        .build()
    )
    try:
        rita = CommandFactory(actor="rita", role="researcher")
        for _ in range(40):
            with pytest.raises(CQRSError):
                svc_limited.execute_command(rita.pause_projection(projection="task_summary"))
        rows = [e for e in everything(svc_limited) if e["actor"] == "rita"]
        assert 1 <= len(rows) <= burst
        assert {e["outcome"] for e in rows} == {"refused"}
    finally:
        svc_limited.close()
