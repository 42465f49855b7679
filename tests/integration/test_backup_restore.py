"""`cqrs-console backup` and `restore` (issue 19, part 4): pg_dump and pg_restore of a populated
database, the read models' checkpoints consistent with the log after a restore, and `verify`
passing on it."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from populated import CHECKPOINTS, LOG, populate, rows
from sqlalchemy.engine import make_url

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.cli import main
from cqrs_core.infra import pg_tools
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import start_embedded_server, stop_embedded_server
from cqrs_core.infra.errors import InfrastructureError
from cqrs_core.projections.engine.verify import verify


def test_a_backup_restored_into_a_new_embedded_server_is_identical_and_verifies(
    db_url, console_env, tmp_path, capsys
):
    populate(db_url)
    dump = tmp_path / "console.dump"
    console_env(db_url)
    assert main(["backup", "--to", str(dump)]) == 0
    out = capsys.readouterr().out
    events = len(rows(db_url, LOG))
    assert f"Backed up {events:,} events" in out and str(dump) in out
    assert dump.stat().st_mode & 0o077 == 0  # readable by its owner only

    console_env()  # a new, empty ./.data
    assert main(["restore", str(dump)]) == 0
    captured = capsys.readouterr()
    assert f"Restored {events:,} events" in captured.out
    # The backup's transaction ids are above a new cluster's: the restore moved the server past them.
    assert "transaction ids past the backup's" in captured.err

    restored = start_embedded_server(tmp_path / "data", "research_console")
    assert rows(restored, LOG) == rows(db_url, LOG)  # every column, txid included
    assert rows(restored, CHECKPOINTS) == rows(db_url, CHECKPOINTS)
    assert main(["verify"]) == 0
    assert "verify: OK" in capsys.readouterr().out

    # New events sort after the restored ones: the projections apply them, and verify still passes.
    svc = CQRSServiceBuilder(load_settings()).with_database_url(restored).with_migrations(False).build()
    try:
        workflow_id = uuid.uuid4()
        svc.execute_command(
            CommandFactory("alice").create_research_workflow(
                title="After the restore",
                research_question="Q?",
                methodology="exploratory",
                workflow_id=workflow_id,
            )
        )
        svc.projections.catch_up(timeout=60)
        assert verify(svc.engine).ok
    finally:
        svc.close()
    assert rows(restored, f"SELECT title FROM workflow_summary WHERE workflow_id = '{workflow_id}'") == [
        ("After the restore",)
    ]


def test_restore_into_a_database_with_events_needs_yes_and_backs_it_up_first(
    db_url, empty_db_url, console_env, tmp_path, capsys
):
    populate(db_url, workflows=4)
    dump = tmp_path / "source.dump"
    console_env(db_url)
    assert main(["backup", "--to", str(dump)]) == 0
    # The target: a migrated database holding one workflow of its own.
    console_env(empty_db_url)
    assert main(["migrate"]) == 0
    svc = CQRSServiceBuilder(load_settings()).with_database_url(empty_db_url).with_migrations(False).build()
    svc.execute_command(
        CommandFactory("bob").create_research_workflow(
            title="Mine", research_question="Q?", methodology="exploratory"
        )
    )
    svc.close()
    before = rows(empty_db_url, LOG)
    capsys.readouterr()

    assert main(["restore", str(dump)]) == 2
    err = capsys.readouterr().err
    assert "holds 1 events" in err and "--yes" in err
    assert rows(empty_db_url, LOG) == before  # nothing changed

    assert main(["restore", str(dump), "--yes"]) == 0
    out = capsys.readouterr().out
    assert rows(empty_db_url, LOG) == rows(db_url, LOG)
    saved = next(line for line in out.splitlines() if "it replaced was backed up to" in line)
    replaced = saved.rsplit(" ", 1)[1].rstrip(".")
    listing = subprocess.run(
        [pg_tools.wheel_bin_dir() / "pg_restore", "--list", replaced],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert " TABLE DATA public events " in listing
    assert main(["verify"]) == 0


def test_restore_refuses_a_file_that_is_no_backup_and_a_missing_one(db_url, console_env, tmp_path, capsys):
    console_env(db_url)
    junk = tmp_path / "junk.dump"
    junk.write_text("not a dump")
    assert main(["restore", str(junk)]) == 2
    assert "is not a backup made by `cqrs-console backup`" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "nowhere.dump")]) == 2
    assert "There is no backup file at" in capsys.readouterr().err


def test_a_configured_server_behind_the_backups_transaction_ids_is_refused_unchanged(
    db_url, console_env, tmp_path, capsys
):
    populate(db_url, workflows=2)
    dump = tmp_path / "source.dump"
    console_env(db_url)
    assert main(["backup", "--to", str(dump)]) == 0
    young = tmp_path / "young"
    url = start_embedded_server(young, "target")  # a new cluster: its transaction ids are low
    try:
        console_env(url)
        assert main(["restore", str(dump)]) == 2
        assert "transaction ids are behind the backup's" in capsys.readouterr().err
        assert rows(url, "SELECT count(*) FROM pg_class WHERE relname = 'events'") == [(0,)]
    finally:
        stop_embedded_server(young)


def test_backup_and_restore_never_print_the_password(db_url, console_env, tmp_path, capsys):
    # The test server trusts local connections: the password is carried, never checked.
    with_password = make_url(db_url).set(password="s3cret-Pa55").render_as_string(hide_password=False)
    populate(db_url, workflows=1)
    dump = tmp_path / "secret.dump"
    console_env(with_password)
    assert main(["backup", "--to", str(dump)]) == 0
    assert main(["restore", str(dump)]) == 2  # it holds events
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err
    assert "***" in captured.out


def test_the_wheels_pg_dump_serves_older_servers_and_a_newer_server_asks_for_one_on_path():
    wheel = pg_tools.wheel_major()
    assert pg_tools.client_program("pg_dump", wheel - 3) == pg_tools.wheel_bin_dir() / "pg_dump"
    with pytest.raises(InfrastructureError, match=f"pg_dump of PostgreSQL {wheel + 5} or newer is needed"):
        pg_tools.client_program("pg_dump", wheel + 5)
