"""Alerts while the database is down: on a PostgreSQL server of its own (stopped and started again
as tests/integration/test_faults_database_restart.py does), the leading evaluator raises
"database unreachable" while the server is away, announces it at once, keeps it in memory, and
writes it on recovery with the time it was decided; then resolves it."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from alert_checks import alert_events, alert_steps, watch
from waiting import wait_until

from cqrs_core import QueryFactory
from cqrs_core.infra.db import migrate, start_embedded_server, stop_embedded_server


def test_an_alert_decided_while_the_database_is_down_is_announced_then_written_with_its_true_time():
    data_dir = Path(tempfile.mkdtemp(prefix="cqrs-alerts-down-"))
    w = None
    try:
        url = start_embedded_server(data_dir, "alerts_down")
        migrate(url)
        w = watch(url, alert_database_unreachable_hold_seconds=2)
        w.evaluate()
        assert w.evaluator.leading and w.notices == []

        assert stop_embedded_server(data_dir)
        w.clock.now = datetime.now(UTC)
        w.evaluate()  # the condition starts: held for 2 s first
        assert w.notices == []
        w.clock.advance(2)
        decided_at = w.clock.now
        w.evaluate()
        [raised] = w.notices
        assert (raised.rule, raised.subject, raised.state, raised.step) == (
            "database_unreachable",
            "database",
            "raised",
            1,
        )
        assert raised.occurred_at == decided_at and raised.severity == "critical"
        assert "cannot be reached" in raised.summary and str(data_dir) not in raised.summary
        assert w.evaluator.pending == 1
        w.clock.advance(5)
        w.evaluate(2)  # still down: the same alert, not a second one, and not announced again
        assert w.notices == [raised] and w.evaluator.pending == 1

        assert start_embedded_server(data_dir, "alerts_down") == url
        w.clock.now = datetime.now(UTC)
        wait_until(lambda: w.evaluate() or w.evaluator.pending == 0, 30, "the kept step to be written")
        wait_until(
            lambda: w.evaluate() or alert_steps(w.engine, "database_unreachable"), 30, "the alert in the log"
        )
        assert alert_steps(w.engine, "database_unreachable") == {
            ("database_unreachable", "database"): [["AlertRaised", "AlertResolved"]]
        }
        raise_event, resolve_event = alert_events(w.engine, raised.alert_id)
        assert raise_event.occurred_at == decided_at, "written with the time it was decided"
        assert resolve_event.occurred_at >= w.clock.now and resolve_event.payload["automatic"] is True
        assert raise_event.actor == resolve_event.actor == "alerts"
        assert str(raise_event.correlation_id) == raised.alert_id
        assert [(n.state, n.step) for n in w.notices] == [("raised", 1), ("resolved", 2)]

        w.service.projections.catch_up(timeout=30)
        [row] = w.service.execute_query(QueryFactory().get_alerts(), cache=False).recent
        assert (row["rule"], row["state"], row["raised_at"]) == (
            "database_unreachable",
            "resolved",
            decided_at,
        )
    finally:
        if w is not None:
            w.close()
        stop_embedded_server(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
