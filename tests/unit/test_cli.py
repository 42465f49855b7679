"""`cqrs-console` commands driven in-process through `main()`, against no database or one that is
never reached (the ones that use a database are in tests/integration/test_cli_database.py)."""

from __future__ import annotations

import json

import pytest

from cqrs_core.cli import main

UNREACHABLE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"


def test_health_of_an_unreachable_database_exits_1(use_database, capsys):
    use_database(UNREACHABLE)

    code = main(["health", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["status"] == "unhealthy"
    assert report["components"][0]["name"] == "database"
    assert all(c["status"] == "unhealthy" for c in report["components"])


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


def test_bench_through_a_pooler_needs_the_server_behind_it(capsys):
    code = main(["bench", "--quick", "--through", "postgresql+psycopg2://u:s3cret@127.0.0.1:6432/x"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == "cqrs-console: --through needs --url, the server the pooler is in front of.\n"
    assert "s3cret" not in captured.out + captured.err


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u@127.0.0.1:5432/postgres", "postgresql+psycopg2://u@127.0.0.1:5432/postgres"),
        ("postgres://u@127.0.0.1:5432/postgres", "postgresql+psycopg2://u@127.0.0.1:5432/postgres"),
        ("postgresql+psycopg2://u@127.0.0.1/postgres", "postgresql+psycopg2://u@127.0.0.1/postgres"),
    ],
)
def test_a_bench_server_url_as_psql_prints_it_means_the_consoles_driver(given, used):
    # SQLAlchemy reads a bare postgresql:// as psycopg 3, on which the bench's statements fail.
    from cqrs_core.cli.arguments import server_url

    assert server_url(given) == used


def test_a_bench_server_url_for_another_database_is_refused_in_one_line_without_its_password(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--quick", "--url", "mysql://root:s3cret@127.0.0.1/x"])

    captured = capsys.readouterr()
    assert exited.value.code == 2
    assert "argument --url: must be a PostgreSQL URL: postgresql://user@host:port/database" in captured.err
    assert "s3cret" not in captured.out + captured.err
    assert "Traceback" not in captured.err
