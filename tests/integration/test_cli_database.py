"""`cqrs-console` commands driven in-process through `main()` against a real database."""

from __future__ import annotations

import json

from cqrs_core.cli import main
from cqrs_core.eventlog.store import EventMetadata, EventStore, NewEvent
from cqrs_core.infra.db import make_engine
from cqrs_core.ops.health import head_revision


def test_health_json_reports_a_healthy_database_with_its_numbers(db_url, use_database, capsys):
    engine = make_engine(db_url)
    EventStore(engine).append(
        "workflow-1",
        0,
        [NewEvent("WorkflowStarted", {}), NewEvent("WorkflowPaused", {})],
        EventMetadata(actor="alice"),
    )
    engine.dispose()
    use_database(db_url)

    code = main(["health", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["status"] == "healthy"
    assert report["event_count"] == 2 and report["head_position"] == 2
    assert report["migration_revision"] == head_revision()
    assert report["database_latency_ms"] > 0
    assert {c["name"]: c["status"] for c in report["components"]} == {
        "database": "healthy",
        "migrations": "healthy",
        "event log": "healthy",
    }


def test_health_of_an_unmigrated_database_is_unhealthy_and_says_to_migrate(
    empty_db_url, use_database, capsys
):
    use_database(empty_db_url)

    code = main(["health"])

    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("Research Workflow Console: unhealthy")
    assert "run `cqrs-console migrate`" in out


def test_migrate_applies_then_reports_already_at_head(empty_db_url, use_database, capsys):
    use_database(empty_db_url)

    assert main(["migrate"]) == 0
    assert f"Applied base -> {head_revision()}" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert f"Already at head ({head_revision()})" in capsys.readouterr().out


# Behind a pooler: CQRS_DATABASE_URL is pgbouncer's (here one nobody answers, so any use of it
# fails), and the commands that need a session of their own go to CQRS_DIRECT_DATABASE_URL.
NO_POOLER = "postgresql+psycopg2://cqrs_console@127.0.0.1:1/nowhere"


def test_migrate_goes_to_the_direct_url_behind_a_pooler(empty_db_url, use_database, monkeypatch, capsys):
    use_database(NO_POOLER)
    monkeypatch.setenv("CQRS_DIRECT_DATABASE_URL", empty_db_url)

    assert main(["migrate"]) == 0
    assert f"Applied base -> {head_revision()}" in capsys.readouterr().out


def test_the_projection_commands_go_to_the_direct_url_behind_a_pooler(
    db_url, use_database, monkeypatch, capsys
):
    use_database(NO_POOLER)
    monkeypatch.setenv("CQRS_DIRECT_DATABASE_URL", db_url)

    assert main(["worker", "--once"]) == 0
    assert capsys.readouterr().out.startswith("caught up: 0 events applied")
    assert main(["verify"]) == 0
