"""`cqrs-console` commands driven in-process through `main()`."""

from __future__ import annotations

import json

import pytest

from cqrs_core.cli import main
from cqrs_core.eventlog.store import EventMetadata, EventStore, NewEvent
from cqrs_core.infra.db import make_engine
from cqrs_core.ops.health import head_revision

UNREACHABLE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"


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


def test_health_of_an_unreachable_database_exits_1(use_database, capsys):
    use_database(UNREACHABLE)

    code = main(["health", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["status"] == "unhealthy"
    assert report["components"][0]["name"] == "database"
    assert all(c["status"] == "unhealthy" for c in report["components"])


def test_migrate_applies_then_reports_already_at_head(empty_db_url, use_database, capsys):
    use_database(empty_db_url)

    assert main(["migrate"]) == 0
    assert f"Applied base -> {head_revision()}" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert f"Already at head ({head_revision()})" in capsys.readouterr().out


def test_migrate_against_an_unreachable_database_prints_one_line_and_exits_2(use_database, capsys):
    use_database(UNREACHABLE)

    code = main(["migrate"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and "database is unavailable" in captured.err
    assert "Traceback" not in captured.err


def test_db_url_hides_the_password(use_database, capsys):
    use_database("postgresql+psycopg2://alice:s3cret@db.example:5432/research")

    assert main(["db", "url"]) == 0

    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert out.strip() == "postgresql+psycopg2://alice:***@db.example:5432/research"


@pytest.mark.parametrize("action", ["start", "stop"])
def test_embedded_server_commands_refuse_when_an_external_url_is_set(use_database, capsys, action):
    use_database(UNREACHABLE)

    code = main(["db", action])

    assert code == 2
    assert "CQRS_DATABASE_URL is set" in capsys.readouterr().err
