"""Faults raise and resolve the matching alerts (issue 17 part 1), with real worker processes
(`python -m cqrs_core worker`, which evaluates the alert rules when it holds the leader lock):

* worker killed: under a steady command load the only worker is killed with SIGKILL; an evaluator
  in this process takes the leader lock from the dead one and raises "projection stalled" for the
  projections nobody applies any more; a replacement worker catches up and the alerts resolve;
* poison event: the worker's own evaluator raises "projection faulted" and "parked events" for a
  poison event, and resolves them once an operator discards it and resumes the projection.
(The database restart is in test_faults_database_restart.py.)

Reproduce: .venv/bin/pytest -s -m slow tests/integration/test_faults_alerts.py
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from alert_checks import alert_events, alert_steps, watch
from fault_tools import Processes, caught_up, owner_of, owners, wait_for
from sqlalchemy import text

from cqrs_core import CommandFactory, QueryFactory
from cqrs_core.app.demo import inject_poison_event
from cqrs_core.infra.db import make_engine
from cqrs_core.tools.workload.runners import run_steady_load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STALLED_AFTER = 2.0  # seconds without progress while events wait
EVALUATE_EVERY = 0.3
WATCHED = ("workflow_summary", "task_summary", "workflow_activity")  # the ones the load feeds


def test_a_killed_worker_raises_projection_stalled_and_its_replacement_resolves_it(db_url, tmp_path):
    w = watch(db_url, alert_stalled_seconds=STALLED_AFTER, alert_stalled_hold_seconds=0)
    stop_load, stop_evaluating = threading.Event(), threading.Event()

    def evaluate_on() -> None:  # this process's evaluator, on the real clock
        while not stop_evaluating.wait(EVALUATE_EVERY):
            w.clock.now = datetime.now(UTC)
            w.evaluate()

    load = threading.Thread(
        target=run_steady_load,
        args=(w.service,),
        kwargs={"rate": 20.0, "duration": 300, "threads": 2, "seed": 17, "stop": stop_load},
        daemon=True,
    )
    evaluator = threading.Thread(target=evaluate_on, daemon=True)
    with Processes(tmp_path / "logs") as procs:
        try:
            first = procs.worker(db_url, alert_evaluate_seconds=EVALUATE_EVERY)
            load.start()
            wait_for(
                lambda: set(owners(w.engine).values()) == {owner_of(first)},
                60,
                "the worker to run everything",
            )
            evaluator.start()

            procs.kill9(first)
            killed_at = datetime.now(UTC)
            wait_for(
                lambda: {s for _, s in alert_steps(w.engine, "projection_stalled")} >= set(WATCHED),
                60,
                "projection stalled to be raised for every projection the load feeds",
            )
            assert w.evaluator.leading, "the dead worker's lock went to this process"
            raised = {
                n.subject: n for n in w.notices if n.rule == "projection_stalled" and n.state == "raised"
            }
            for subject in WATCHED:
                assert raised[subject].occurred_at > killed_at and raised[subject].severity == "critical"

            second = procs.worker(db_url, alert_evaluate_seconds=EVALUATE_EVERY)
            started_at = datetime.now(UTC)
            wait_for(
                lambda: all(
                    steps == [["AlertRaised", "AlertResolved"]]
                    for _, steps in alert_steps(w.engine, "projection_stalled").items()
                ),
                60,
                "the replacement to catch up and the stalled alerts to resolve",
            )
            assert second.poll() is None, procs.output(second)
            resolved_at = []
            for subject in WATCHED:
                resolved = alert_events(w.engine, raised[subject].alert_id)[-1]
                assert resolved.occurred_at > started_at and resolved.payload["automatic"] is True
                resolved_at.append(resolved.occurred_at)
            raised_after = max(raised[s].occurred_at for s in WATCHED) - killed_at
            print(
                f"\nworker killed: 'projection stalled' raised for {', '.join(WATCHED)} at most "
                f"{raised_after.total_seconds():.1f} s after the kill (threshold {STALLED_AFTER:g} s), resolved at most "
                f"{(max(resolved_at) - started_at).total_seconds():.1f} s after the replacement worker started"
            )
        finally:
            stop_load.set()
            stop_evaluating.set()
            for thread in (load, evaluator):
                if thread.is_alive():
                    thread.join(30)
            w.close()


def test_a_poison_event_raises_faulted_and_parked_and_they_resolve_once_it_is_discarded(db_url, tmp_path):
    olga = CommandFactory(actor="olga", role="operator")
    observer = make_engine(db_url, pool_size=2)
    w = watch(db_url)  # sends the operator's commands; its own evaluator never runs here
    with Processes(tmp_path / "logs") as procs:
        try:
            worker = procs.worker(
                db_url,
                alert_evaluate_seconds=EVALUATE_EVERY,
                alert_faulted_hold_seconds=0,
                alert_parked_hold_seconds=0,
            )
            wait_for(lambda: set(owners(observer).values()) == {owner_of(worker)}, 60, "the worker to start")
            poison = inject_poison_event(w.service.event_store, actor="olga", role="operator")

            expected = {
                ("projection_faulted", "workflow_summary"),
                ("parked_events", "workflow_summary"),
                ("parked_events", "task_summary"),
            }
            wait_for(lambda: set(alert_steps(observer)) >= expected, 60, "the worker to raise the alerts")
            with observer.connect() as conn:
                parked = list(
                    conn.execute(text("SELECT id FROM parked_events WHERE status = 'parked'")).scalars()
                )
            assert len(parked) == 2
            w.service.execute_command(olga.discard_parked_events(ids=parked))
            w.service.execute_command(olga.resume_projection(projection="workflow_summary"))
            wait_for(
                lambda: all(
                    alert_steps(observer)[key] == [["AlertRaised", "AlertResolved"]] for key in expected
                ),
                60,
                "the alerts to resolve",
            )
            wait_for(lambda: caught_up(observer), 30, "the worker to apply every event")
            alerts = w.service.execute_query(QueryFactory().get_alerts(), cache=False)
            assert alerts.open == []
            assert {(a["rule"], a["subject"]) for a in alerts.recent} == expected
            assert all(
                a["resolved_by"] == "alerts" and a["raised_at"] > poison.recorded_at for a in alerts.recent
            )
            assert worker.poll() is None, procs.output(worker)
            print(
                f"\npoison event: {', '.join(sorted(f'{r} ({s})' for r, s in expected))} raised by the worker "
                f"at most {max((a['raised_at'] - poison.recorded_at).total_seconds() for a in alerts.recent):.1f} s after "
                "the poison event, resolved by it once the event was discarded and the projection resumed"
            )
        finally:
            w.close()
            observer.dispose()
