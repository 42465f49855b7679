"""Operator commands are idempotent like workflow commands: a command id claims its command log
row before the action runs, so the action runs once per id and a failed action can be retried."""

import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import text

from cqrs_core import CommandFactory
from cqrs_core.infra.errors import CQRSError
from cqrs_core.write.command_bus import CommandResult

WAIT_LIMIT_SECONDS = 10


def olga() -> CommandFactory:
    return CommandFactory(actor="olga", role="operator")


def wait_until(condition, limit: float = WAIT_LIMIT_SECONDS) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def logged(service, command_id) -> int:
    with service.engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM command_log WHERE command_id = :id"), {"id": command_id}
        ).scalar_one()


def test_the_same_operator_command_sent_twice_at_once_runs_its_action_once(service, monkeypatch):
    actions: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def pause(name: str) -> None:
        actions.append(name)
        entered.set()
        release.wait(WAIT_LIMIT_SECONDS)

    monkeypatch.setattr(service.projections, "pause", pause)
    cmd = olga().pause_projection(projection="task_summary")
    results: list[CommandResult] = []

    def send() -> None:
        results.append(service.execute_command(cmd))

    first = threading.Thread(target=send)
    first.start()
    assert entered.wait(WAIT_LIMIT_SECONDS)
    twin = threading.Thread(target=send)
    twin.start()

    def twin_waits_on_the_claim() -> bool:
        with service.engine.connect() as conn:
            return bool(
                conn.execute(
                    text("""SELECT count(*) FROM pg_stat_activity
                            WHERE datname = current_database() AND wait_event_type = 'Lock'""")
                ).scalar_one()
            )

    # The twin either waits for the first one's claim (the fix) or runs the action too.
    assert wait_until(lambda: len(actions) > 1 or twin_waits_on_the_claim())
    release.set()
    first.join(WAIT_LIMIT_SECONDS)
    twin.join(WAIT_LIMIT_SECONDS)
    assert actions == ["task_summary"]
    assert sorted(r.duplicate for r in results) == [False, True]
    assert {r.aggregate_id for r in results} == {"task_summary"}
    assert logged(service, cmd.command_id) == 1


def test_a_failed_operator_action_leaves_no_record_and_its_retry_runs_it(service, monkeypatch):
    actions: list[list[int] | None] = []

    def retry_parked(ids=None):
        actions.append(ids)
        if len(actions) == 1:
            raise RuntimeError("the database went away mid-action")
        return 0

    monkeypatch.setattr(service.projections, "retry_parked", retry_parked)
    cmd = olga().retry_parked_events(ids=[7])
    with pytest.raises(CQRSError):
        service.execute_command(cmd)
    assert logged(service, cmd.command_id) == 0
    result = service.execute_command(cmd)
    assert not result.duplicate and result.aggregate_id == "projections"
    assert actions == [[7], [7]]
    again = service.execute_command(cmd)
    assert again.duplicate and actions == [[7], [7]]


def test_a_workflow_commands_log_record_is_its_result_with_its_fingerprint(service):
    cmd = CommandFactory(actor="alice", role="researcher").create_research_workflow(
        title="AI Research Project",
        research_question="What are the latest AI trends?",
        methodology="systematic_review",
        tasks=[{"name": "Search", "kind": "literature_search", "assignee": "bot"}],
    )
    result = service.execute_command(cmd)
    with service.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT result FROM command_log WHERE command_id = :id"), {"id": cmd.command_id}
        ).scalar_one()
    assert set(stored) == set(result.to_json(fingerprint="x"))
    again = CommandResult.from_json(stored, duplicate=True)
    assert again == replace(result, duration_ms=again.duration_ms, duplicate=True)
    assert service.execute_command(cmd) == again
