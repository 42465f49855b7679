"""Database commands: `migrate`, `db start`, `db stop`, `db url`, `db upgrade`."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from cqrs_core.cli import fail
from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import (
    embedded_pgdata,
    make_engine,
    migrate,
    postmaster_state,
    redact,
    resolve_database_url,
    stop_embedded_server,
)
from cqrs_core.infra.errors import InfrastructureError

log = logging.getLogger(__name__)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("migrate", help="apply database migrations up to head")
    p.set_defaults(handler=run_migrate)

    db = subparsers.add_parser("db", help="the embedded PostgreSQL server and the database URL")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser(
        "start", help="start the embedded server for CQRS_DATA_DIR (or attach to it) and print its URL"
    ).set_defaults(handler=run_db_start)
    db_commands.add_parser("stop", help="stop the embedded server for CQRS_DATA_DIR").set_defaults(
        handler=run_db_stop
    )
    db_commands.add_parser("url", help="print the database URL in use (password hidden)").set_defaults(
        handler=run_db_url
    )
    upgrade = db_commands.add_parser(
        "upgrade",
        help="move CQRS_DATA_DIR to this install's PostgreSQL major version with pg_upgrade (backed up first)",
    )
    upgrade.add_argument(
        "--old-bindir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the old version's server programs (default: where Debian, Red Hat or Homebrew put them)",
    )
    upgrade.set_defaults(handler=run_db_upgrade)


# ---------------------------------------------------------------- handlers


def run_migrate(args: argparse.Namespace) -> int:
    from cqrs_core.ops.health import current_revision

    settings = get_settings()
    url = settings.direct_database_url or database_url(settings)  # never through a pooler
    applied = migrate(url)
    if applied:
        print(f"Applied {', '.join(applied)} to {redact(url)}")
        return 0
    engine = make_engine(url, pool_size=1)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    print(f"Already at head ({revision}): {redact(url)}")
    return 0


def run_db_start(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.database_url:
        return fail("CQRS_DATABASE_URL is set, so the embedded server is not used; unset it to start one.")
    url = database_url(settings)
    print(f"Embedded PostgreSQL is running for {data_dir_of(settings)}: {redact(url)}")
    return 0


def run_db_stop(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.database_url:
        return fail("CQRS_DATABASE_URL is set, so no embedded server runs here; nothing to stop.")
    if stop_embedded_server(settings.data_dir):
        print(f"Stopped the embedded PostgreSQL server for {data_dir_of(settings)}.")
    else:
        print(f"No embedded PostgreSQL server was running for {data_dir_of(settings)}.")
    return 0


def run_db_url(args: argparse.Namespace) -> int:
    print(redact(database_url(get_settings())))
    return 0


def run_db_upgrade(args: argparse.Namespace) -> int:
    from cqrs_core.ops.upgrade import upgrade_data_dir

    settings = get_settings()

    def say(line: str) -> None:
        print(f"db upgrade: {line}", file=sys.stderr, flush=True)

    report = upgrade_data_dir(settings, old_bindir=args.old_bindir, say=say)
    if report.backup is None and report.kept is None:
        print(f"{data_dir_of(settings)} is already at PostgreSQL {report.new_major}; nothing to upgrade.")
        return 0
    print(
        f"Upgraded {data_dir_of(settings)} from PostgreSQL {report.old_major} to {report.new_major}: "
        f"{report.events:,} events (head {report.head:,})."
    )
    if report.backup is not None:
        print(f"Backup taken first: {report.backup} (cqrs-console restore can bring it back).")
    print(f"The old data directory is kept in {report.kept}; delete it once you are satisfied.")
    return 0


# ---------------------------------------------------------------- shared by the commands


def database_url(settings: Settings) -> str:
    """The configured URL, or the embedded server's (started on demand). A server that does not
    start becomes one sentence (its log when there is one); the details go to the debug log."""
    try:
        return resolve_database_url(settings)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        log.debug("embedded server did not start", exc_info=True)
        server_log = embedded_pgdata(settings.data_dir) / "log"
        where = f"see {server_log}" if server_log.is_file() else f"{type(exc).__name__}: {exc}"
        raise InfrastructureError(
            f"The embedded PostgreSQL server did not start ({where}).", detail=type(exc).__name__
        ) from exc


def embedded_server_running(data_dir: Path) -> bool:
    """Whether a live postmaster of the embedded data dir runs (does not start anything)."""
    return postmaster_state(embedded_pgdata(data_dir)).status == "running"


def data_dir_of(settings: Settings) -> Path:
    return settings.data_dir.expanduser().resolve()
