"""`health [--json]`: is the system usable right now? Exit code 1 when it is not."""

from __future__ import annotations

import argparse
import json

from cqrs_core.cli.database import data_dir_of, database_url, embedded_server_running
from cqrs_core.infra.config import get_settings
from cqrs_core.infra.db import make_engine
from cqrs_core.ops.health import HealthReport, check_health, replica_check, unreachable_report
from cqrs_core.read.replica import ReadReplica


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("health", help="check the database, the schema and the event log")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_health)


def run_health(args: argparse.Namespace) -> int:
    report = current_report()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 1 if report.status == "unhealthy" else 0


def current_report() -> HealthReport:
    settings = get_settings()
    # A health check observes; it does not start the embedded server it is asked about.
    if not settings.database_url and not embedded_server_running(settings.data_dir):
        return unreachable_report(
            f"the embedded PostgreSQL server for {data_dir_of(settings)} is not running; "
            "start it with `cqrs-console db start`"
        )
    engine = make_engine(database_url(settings), pool_size=1)
    read_engine = make_engine(settings.read_database_url, pool_size=1) if settings.read_database_url else None
    try:
        checks = []
        if read_engine is not None:  # the read replica's line: reachable, how far behind
            replica = ReadReplica(
                read_engine,
                engine,
                fallback=settings.read_replica_fallback,
                max_lag_seconds=settings.read_replica_max_lag_seconds,
            )
            checks.append(replica_check(replica))
        return check_health(engine, checks)
    finally:
        engine.dispose()
        if read_engine is not None:
            read_engine.dispose()


def format_report(report: HealthReport) -> str:
    width = max(len(c.name) for c in report.components)
    lines = [f"Research Workflow Console: {report.status}"]
    lines += [f"  {c.name:<{width}}  {c.status:<9}  {c.detail}" for c in report.components]
    return "\n".join(lines)
