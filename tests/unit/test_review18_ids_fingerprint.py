"""review18: new_uuid4 and the fingerprint's new formula, attacked."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import os
import pickle
import threading
import uuid

import pytest

from cqrs_core.infra.ids import new_uuid4
from cqrs_core.write.command_bus import _NOT_CONTENT, fingerprint
from cqrs_core.write.commands import CommandFactory


def test_new_uuid4_is_a_version_4_rfc4122_uuid_equal_to_its_round_trips():
    for _ in range(2000):
        u = new_uuid4()
        assert u.version == 4 and u.variant == uuid.RFC_4122
        for other in (
            uuid.UUID(str(u)),
            uuid.UUID(hex=u.hex),
            uuid.UUID(bytes=u.bytes),
            uuid.UUID(int=u.int),
        ):
            assert other == u and hash(other) == hash(u) and str(other) == str(u)
        assert pickle.loads(pickle.dumps(u)) == u
        assert copy.deepcopy(u) == u
        assert u.is_safe == uuid.SafeUUID.unknown


def test_new_uuid4_bits_are_all_used():
    ors, ands = 0, (1 << 128) - 1
    for _ in range(5000):
        i = new_uuid4().int
        ors |= i
        ands &= i
    fixed = (0xF000 << 64) | (0xC000 << 48)
    assert ors | fixed == (1 << 128) - 1  # every random bit was 1 at least once
    assert ands & ~fixed & ((1 << 128) - 1) == 0  # and 0 at least once


def test_new_uuid4_unique_across_threads():
    out: list[list[int]] = [[] for _ in range(8)]

    def run(i):
        out[i] = [new_uuid4().int for _ in range(50_000)]

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    flat = [x for xs in out for x in xs]
    assert len(set(flat)) == len(flat) == 400_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_new_uuid4_parent_and_forked_child_never_share_ids():
    new_uuid4()  # a buffer is half used when the fork happens
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            data = b"".join(new_uuid4().bytes for _ in range(600))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    child = {data[i : i + 16] for i in range(0, len(data), 16)}
    parent = {new_uuid4().bytes for _ in range(600)}
    assert len(child) == 600 and not child & parent


def _commands():
    f = CommandFactory(actor="Zoë 🎉", role="admin")
    wf, task, alert = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    when = dt.datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    return [
        f.create_research_workflow(
            title="Ünïcode \u2028 title",
            research_question='Why "quotes" and \\backslashes\\?',
            methodology="systematic_review",
            tags=["a", "b-c"],
            priority="high",
            due_date="2031-12-31",
            tasks=[{"name": "t1", "assignee": "bob", "estimate_minutes": 90}],
        ),
        f.update_workflow_details(workflow_id=wf, title="new", tags=["x"]),
        f.start_workflow(workflow_id=wf),
        f.pause_workflow(workflow_id=wf, reason="r"),
        f.resume_workflow(workflow_id=wf),
        f.complete_workflow(workflow_id=wf, reason="done"),
        f.fail_workflow(workflow_id=wf, reason="bad"),
        f.cancel_workflow(workflow_id=wf, reason="stop"),
        f.add_task(workflow_id=wf, name="n", assignee="bob", estimate_minutes=5, depends_on=[uuid.uuid4()]),
        f.remove_task(workflow_id=wf, task_id=task),
        f.start_task(workflow_id=wf, task_id=task),
        f.complete_task(workflow_id=wf, task_id=task, result_summary="ok 🎉"),
        f.fail_task(workflow_id=wf, task_id=task, error="e"),
        f.retry_task(workflow_id=wf, task_id=task),
        f.pause_projection(projection="workflow_summary"),
        f.resume_projection(projection="workflow_summary"),
        f.rebuild_projection(projection="workflow_summary"),
        f.retry_parked_events(ids=[1, 2]),
        f.retry_parked_events(),
        f.discard_parked_events(ids=[3]),
        f.refresh_statistics(),
        f.raise_alert(rule="r", subject="s", severity="critical", summary="x"),
        f.acknowledge_alert(alert_id=alert, reason="r"),
        f.snooze_alert(alert_id=alert, until=when, reason="r"),
        f.end_alert_snooze(alert_id=alert, reason="r"),
        f.resolve_alert(alert_id=alert, reason="r", automatic=True),
        f.record_alert_action(alert_id=alert, action="restart", reason="r"),
    ]


def test_fingerprint_is_the_old_formula_for_every_command_type():
    cmds = _commands()
    for cmd in cmds:
        old = hashlib.sha256(
            f"{cmd.command_type}\n{cmd.model_dump_json(exclude=_NOT_CONTENT)}".encode()
        ).hexdigest()
        assert fingerprint(cmd) == old, cmd.command_type
