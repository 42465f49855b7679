"""Auto-restart of a stalled projection runner (issue 17 part 2, CQRS_ALERT_AUTO_RESTART): a real
runner whose batch of workflow_summary wedges inside `apply` (it waits on an Event the test holds)
keeps its advisory lock and a live heartbeat while the projection stands still. Restarting it
abandons that drain, ends its database session (the open batch rolls back) and drains the
projection afresh: it catches up while the old thread is still stuck, and when that thread wakes it
writes nothing, so every event is applied exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fault_tools import assert_exactly_once, assert_verified, scalar
from services import build_service
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from waiting import wait_until

from cqrs_core import CommandFactory, QueryFactory
from cqrs_core.domain.events import alert_id_of
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.ops.auto_restart import auto_restart_stalled
from cqrs_core.projections.engine.manager import ProjectionManager
from cqrs_core.projections.engine.runtime import ProjectionRuntime
from cqrs_core.projections.registry import PROJECTION_NAMES

WEDGED = "workflow_summary"
# Every other registered projection (alert_summary included): held elsewhere in the test where this
# process must run workflow_summary alone.
OTHERS = tuple(n for n in PROJECTION_NAMES if n != WEDGED)


class Wedged:
    """A real projection whose first batch blocks in `apply` until `release` is set; every later
    batch is applied as usual."""

    def __init__(self, inner, release: threading.Event) -> None:
        self._inner = inner
        self.release = release
        self.entered = threading.Event()
        self.woke = threading.Event()
        self._first = True
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def apply(self, conn, events, tables) -> None:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.entered.set()
            self.release.wait()
            self.woke.set()
        self._inner.apply(conn, events, tables)


@pytest.fixture
def engine(db_url):
    e = make_engine(db_url, role="cqrs_app")
    yield e
    e.dispose()


@pytest.fixture
def service(db_url):
    svc = build_service(db_url)
    yield svc
    svc.close()


def create_workflows(service, count: int) -> None:
    researcher = CommandFactory(actor="alice", role="researcher")
    for i in range(count):
        service.execute_command(
            researcher.create_research_workflow(
                title=f"Study {i}",
                research_question="Does it work?",
                methodology="case_study",
                tasks=[{"name": "Search", "kind": "literature_search", "assignee": "alice"}],
            )
        )


def lag(runtime: ProjectionRuntime) -> dict[str, int]:
    return {s.name: s.lag_events for s in runtime.manager.status()}


@pytest.fixture
def wedged_runtime(db_url, engine, service) -> Iterator[tuple[ProjectionRuntime, Wedged]]:
    settings = load_settings(database_url=db_url, alert_auto_restart=True, projection_poll_seconds=0.2)
    runtime = ProjectionRuntime(engine, settings)
    release = threading.Event()
    wedged = Wedged(runtime.manager.projections[WEDGED], release)
    runtime.manager.projections[WEDGED] = wedged  # the runner reads the manager's projections
    create_workflows(service, 3)
    yield runtime, wedged
    release.set()
    runtime.stop()


def stall(runtime: ProjectionRuntime, wedged: Wedged, service) -> None:
    """Start the runtime and wait until workflow_summary is stalled: lock held, heartbeat alive,
    events waiting, position not moving (its batch sits in `apply`)."""
    runtime.start()
    wait_until(wedged.entered.is_set, 30, "workflow_summary's first batch to wedge")
    create_workflows(service, 2)
    assert WEDGED in runtime.manager.held()
    status = wait_until(
        lambda: (s := {s.name: s for s in runtime.manager.status()}[WEDGED]).owner and s,
        10,
        "a heartbeat naming this process as workflow_summary's runner",
    )
    assert status.state in ("running", "catching_up") and status.owner == runtime.manager.owner
    assert status.position == 0 and status.lag_events > 0


def test_auto_restart_abandons_the_stuck_drain_and_the_projection_catches_up(wedged_runtime, service, engine):
    runtime, wedged = wedged_runtime
    stall(runtime, wedged, service)
    # A round of the runner waits for all its drains: the wedged one holds the others back too.
    assert all(lag(runtime)[n] > 0 for n in OTHERS)

    done = auto_restart_stalled(runtime.settings, runtime, WEDGED)

    assert done is not None and done.startswith(
        f"auto-restarted the runner of {WEDGED}: abandoned its drain, stuck for "
    )
    assert "rolled back its open batch (database backend" in done
    wait_until(
        lambda: all(v == 0 for v in lag(runtime).values()),
        30,
        "every projection to catch up after the restart",
    )
    assert not wedged.woke.is_set()  # the old thread still waits: the new drain did the work
    assert scalar(engine, "SELECT count(*) FROM workflow_summary") == 5
    create_workflows(service, 1)  # and the runner keeps going
    wait_until(lambda: all(v == 0 for v in lag(runtime).values()), 30, "the next event applied everywhere")

    wedged.release.set()
    wait_until(wedged.woke.is_set, 10, "the abandoned thread to wake")
    runtime.stop()
    assert_exactly_once(engine, caught_up=True)  # the abandoned batch wrote nothing
    assert_verified(engine)


def test_auto_restart_works_when_the_process_runs_that_projection_alone(
    wedged_runtime, service, engine, db_url
):
    runtime, wedged = wedged_runtime
    elsewhere = ProjectionManager(make_engine(db_url), load_settings(database_url=db_url))
    try:
        for name in OTHERS:  # another "process" holds the other projections
            elsewhere.run_once(name)
        assert elsewhere.held() == set(OTHERS)
        stall(runtime, wedged, service)
        assert runtime.manager.held() == {WEDGED}

        done = auto_restart_stalled(runtime.settings, runtime, WEDGED)

        assert done is not None and done.startswith(f"auto-restarted the runner of {WEDGED}")
        wait_until(lambda: lag(runtime)[WEDGED] == 0, 30, "workflow_summary to catch up after the restart")
        assert scalar(engine, "SELECT count(*) FROM workflow_summary") == 5
        refused = auto_restart_stalled(runtime.settings, runtime, OTHERS[0])
        assert refused == (
            f"did not auto-restart the runner of {OTHERS[0]}: this process ({runtime.manager.owner}) does not run it"
        )
    finally:
        elsewhere.close()
        elsewhere.engine.dispose()


def test_with_auto_restart_off_nothing_is_done_and_the_runner_stays_stuck(wedged_runtime, service, db_url):
    runtime, wedged = wedged_runtime
    stall(runtime, wedged, service)

    assert auto_restart_stalled(load_settings(database_url=db_url), runtime, WEDGED) is None

    with runtime.engine.connect() as conn, pytest.raises(OperationalError, match="could not obtain lock"):
        # the wedged batch still holds its checkpoint row
        conn.execute(
            text("SELECT 1 FROM projection_checkpoints WHERE name = :n FOR UPDATE NOWAIT"), {"n": WEDGED}
        )
    assert {s.name: s for s in runtime.manager.status()}[WEDGED].position == 0


def test_without_a_runner_in_this_process_auto_restart_says_so(db_url):
    settings = load_settings(database_url=db_url, alert_auto_restart=True)

    done = auto_restart_stalled(settings, None, WEDGED)

    assert done == f"did not auto-restart the runner of {WEDGED}: no projection runner runs in this process"


# ---------------------------------------------------------------- from the alert evaluator


def alert_steps(engine, rule: str, subject: str = WEDGED) -> list[tuple[str, dict, str]]:
    """(event_type, payload, actor) of the alerts of `rule` on `subject`, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT e.event_type, e.payload, e.actor FROM events e WHERE e.stream_id IN ("
                " SELECT stream_id FROM events WHERE event_type = 'AlertRaised' AND payload->>'rule' = :rule"
                " AND payload->>'subject' = :subject)"
                " ORDER BY e.position"
            ),
            {"rule": rule, "subject": subject},
        ).all()
    return [(r.event_type, r.payload, r.actor) for r in rows]


def test_the_stall_alert_auto_restarts_the_runner_and_its_history_says_so(db_url, engine):
    """The wiring of service.projection_runtime(): the evaluator in the worker raises "projection
    stalled", restarts the runner (CQRS_ALERT_AUTO_RESTART) and records it as the alert's next step;
    the projection then catches up and the alert resolves by itself."""
    svc = build_service(
        db_url,
        alert_auto_restart=True,
        alert_stalled_seconds=1,
        alert_evaluate_seconds=0.3,
        projection_poll_seconds=0.2,
    )
    runtime = svc.projection_runtime()
    release = threading.Event()
    wedged = Wedged(runtime.manager.projections[WEDGED], release)
    runtime.manager.projections[WEDGED] = wedged
    try:
        create_workflows(svc, 3)
        runtime.start()
        wait_until(wedged.entered.is_set, 30, "workflow_summary's first batch to wedge")
        create_workflows(svc, 2)

        steps = wait_until(
            lambda: (s := alert_steps(engine, "projection_stalled")) and s[-1][0] == "AlertResolved" and s,
            60,
            "the stall alert to be raised, acted on and resolved",
            interval=0.2,
        )

        kinds = [kind for kind, _, _ in steps]
        assert kinds == ["AlertRaised", "AlertActionTaken", "AlertResolved"]
        raised, acted, resolved = (payload for _, payload, _ in steps)
        assert raised["subject"] == WEDGED
        assert acted["action"] == "auto_restart"
        assert acted["reason"].startswith(f"auto-restarted the runner of {WEDGED}: abandoned its drain")
        assert resolved["automatic"] is True
        assert {actor for _, _, actor in steps} == {"alerts"}
        assert not wedged.woke.is_set()  # caught up by the new drain, not by the stuck one
        acted_on = scalar(
            engine,
            "SELECT stream_id FROM events WHERE event_type = 'AlertRaised' AND payload->>'subject' = :s",
            s=WEDGED,
        )
        history = svc.execute_query(QueryFactory().get_alert_history(alert_id_of(acted_on)), cache=False)
        assert [s["step"] for s in history.steps] == ["raised", "auto-restart", "resolved"]
        audit = svc.execute_query(QueryFactory().get_audit_trail(), cache=False).entries
        # On the audit timeline too, with what it did. (A round of the runner waits for all its
        # drains, so with a 1 s threshold the projections the wedged one held back were found
        # stalled and restarted as well.)
        restarts = {
            e["parameters"]["reason"]
            for e in audit
            if e["action"] == "alert.action" and e["actor"] == "alerts"
        }
        assert acted["reason"] in restarts
        wait_until(lambda: all(v == 0 for v in lag(runtime).values()), 30, "every projection caught up")
    finally:
        release.set()
        runtime.stop()
        svc.close()
    assert_exactly_once(engine, caught_up=True)
    assert_verified(engine)


def test_with_auto_restart_off_the_stall_alert_records_no_action(db_url, engine):
    svc = build_service(
        db_url, alert_stalled_seconds=1, alert_evaluate_seconds=0.3, projection_poll_seconds=0.2
    )
    runtime = svc.projection_runtime()
    release = threading.Event()
    wedged = Wedged(runtime.manager.projections[WEDGED], release)
    runtime.manager.projections[WEDGED] = wedged
    try:
        create_workflows(svc, 3)
        runtime.start()
        wait_until(wedged.entered.is_set, 30, "workflow_summary's first batch to wedge")
        wait_until(lambda: alert_steps(engine, "projection_stalled"), 30, "the stall alert", interval=0.2)
        time.sleep(1.0)  # three more evaluations: still no action, and the runner stays stuck
        assert [kind for kind, _, _ in alert_steps(engine, "projection_stalled")] == ["AlertRaised"]
        assert {s.name: s for s in runtime.manager.status()}[WEDGED].position == 0
    finally:
        release.set()
        runtime.stop()
        svc.close()


def test_a_restart_asked_while_the_runtime_stops_does_not_wait_for_the_stop(wedged_runtime, service):
    """The evaluator asks for the restart holding its own lock, and `stop` (holding the runtime's)
    closes the evaluator, which waits for that lock: a restart that waited for `stop` deadlocked
    the worker's shutdown."""
    runtime, wedged = wedged_runtime
    stall(runtime, wedged, service)
    returned = threading.Event()
    with runtime._mutex:  # what `stop` holds while it waits for the threads and closes the jobs

        def ask() -> None:
            runtime.restart_runner(WEDGED)
            returned.set()

        threading.Thread(target=ask, daemon=True).start()
        assert returned.wait(5), "restart_runner waited for the runtime's lock"
    runtime._stop.set()  # and once stopping, nothing is restarted
    done = runtime.restart_runner(WEDGED)
    assert (done.restarted, done.detail) == (False, "the projection runtime of this process is stopping")
