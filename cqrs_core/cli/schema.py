"""`cqrs-console schema check`: read every stored event through this code's upcasters and validators
(a dry run in a read-only transaction; nothing is written). Exit 0 when every event reads, 1 when
any would fail: run it before deploying a change to an event's shape."""

from __future__ import annotations

import argparse
import json


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    schema = subparsers.add_parser("schema", help="event schemas: check the stored log against this code")
    verbs = schema.add_subparsers(dest="schema_command", metavar="VERB", required=True)
    check = verbs.add_parser(
        "check",
        help="read every stored event through the current upcasters and validators; exit 1 if any fails",
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from cqrs_core.infra.config import get_settings
    from cqrs_core.infra.db import make_engine, migrate, resolve_direct_database_url, runtime_connection
    from cqrs_core.ops.schema_check import dry_run

    settings = get_settings()
    owner_url = resolve_direct_database_url(settings)  # migrations and SET ROLE need the server itself
    migrate(owner_url)
    url, role = runtime_connection(settings, owner_url)  # the runtime role's rights, not the owner's
    engine = make_engine(url, pool_size=1, application_name="cqrs-console schema check", role=role)
    try:
        report = dry_run(engine)
    finally:
        engine.dispose()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "events": report.events,
                    "streams": report.streams,
                    "versions": [
                        {"event_type": t, "schema_version": v, "events": n}
                        for (t, v), n in sorted(report.versions.items())
                    ],
                    "upcasters": dict(sorted(report.upcasters.items())),
                    "failed": report.failed,
                    "failures": [f.__dict__ for f in report.failures],
                    "seconds": round(report.seconds, 3),
                },
                indent=2,
            )
        )
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
