"""`backup [--to FILE]` and `restore FILE [--yes]`: the database with PostgreSQL's own pg_dump and
pg_restore (ops/backup.py), against the embedded server or CQRS_DATABASE_URL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from cqrs_core.cli.database import database_url
from cqrs_core.infra.config import get_settings
from cqrs_core.ops import backup as backups


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backup", help="write the database to one file (pg_dump custom format, one consistent snapshot)"
    )
    p.add_argument(
        "--to",
        type=Path,
        default=None,
        metavar="FILE",
        help="where to write it (default: CQRS_DATA_DIR/backups/<database>-<UTC time>.dump)",
    )
    p.set_defaults(handler=run_backup)

    p = subparsers.add_parser(
        "restore",
        help="restore a backup into the database in use (empty, or replaced with --yes), then migrate it",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="a file written by `cqrs-console backup`")
    p.add_argument(
        "--yes",
        action="store_true",
        help="replace a database that holds events (it is backed up first)",
    )
    p.set_defaults(handler=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = settings.direct_database_url or database_url(settings)  # pg_dump never through a pooler
    database = make_url(url).database or settings.database_name
    report = backups.backup(url, args.to or backups.default_backup_path(settings, database))
    print(
        f"Backed up {report.events:,} events (head {report.head:,}) from {report.source} "
        f"to {report.path} ({report.bytes / 1e6:,.1f} MB)."
    )
    return 0


def run_restore(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(f"restore: {line}", file=sys.stderr, flush=True)

    report = backups.restore(get_settings(), args.file, confirmed=args.yes, say=say)
    if report.replaced_backup is not None:
        print(f"The database it replaced was backed up to {report.replaced_backup}.")
    print(
        f"Restored {report.events:,} events (head {report.head:,}) from {report.path} into {report.target}; "
        "its read models are as they were at the backup (run `cqrs-console verify` to check them)."
    )
    return 0
