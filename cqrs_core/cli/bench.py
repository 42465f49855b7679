"""`bench`, `bench-pages`, `bench-snapshots` and `bench-viewers`: the benchmarks, each on a fresh, isolated database
(`bench-viewers` also serves the console and watches it with real browsers; tools/viewer_bench.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cqrs_core.cli import fail
from cqrs_core.cli.arguments import bounded_float, positive_int, server_url
from cqrs_core.cli.database import database_url
from cqrs_core.infra.config import get_settings

EXIT_OK, EXIT_PROBLEM = 0, 1


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="measure throughput and latency on a fresh, isolated database"
    )
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes; finishes in under a minute")
    size.add_argument("--full", action="store_true", help="large sizes (1,000,000 events)")
    bench.add_argument(
        "--events",
        type=positive_int,
        default=None,
        metavar="N",
        help="events for catch-up and rebuild (default 200,000; --quick 5,000; --full 1,000,000)",
    )
    bench.add_argument(
        "--url",
        default=None,
        metavar="URL",
        type=server_url,
        help="run on this PostgreSQL server (a scratch database is created and dropped) "
        "instead of a temporary embedded one",
    )
    bench.add_argument(
        "--through",
        default=None,
        metavar="POOLER_URL",
        type=server_url,
        help="send the commands and queries through this pooler in transaction mode (pgbouncer in front of "
        "--url's server, routing any database name there); migrations and projections keep --url",
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_peer_argument(bench)
    bench.set_defaults(handler=run_bench_command)

    pages = subparsers.add_parser("bench-pages", help="time every dashboard page against a large read side")
    pages.add_argument(
        "--workflows", type=int, default=100_000, help="read-model rows to fill (default 100,000)"
    )
    pages.add_argument("--runs", type=int, default=5, help="timed runs per page and mode")
    pages.add_argument(
        "--url",
        default=None,
        type=server_url,
        help="server to create a scratch database on (default: temporary embedded)",
    )
    pages.add_argument("--json", action="store_true")
    pages.set_defaults(handler=run_page_bench_command)

    snapshots = subparsers.add_parser(
        "bench-snapshots",
        help="time the first command on a workflow with a long history: full replay, then from a snapshot",
    )
    snapshots.add_argument(
        "--events",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="the workflow's events (default 100,000)",
    )
    snapshots.add_argument(
        "--runs", type=positive_int, default=5, metavar="R", help="timed commands per mode"
    )
    snapshots.add_argument(
        "--url",
        default=None,
        metavar="URL",
        type=server_url,
        help="server to create a scratch database on (default: temporary embedded)",
    )
    snapshots.add_argument("--json", action="store_true", help="print the figures as JSON")
    snapshots.set_defaults(handler=run_snapshot_bench_command)

    # ---------------------------------------------------------------- bench

    _add_viewer_parser(subparsers)
    _add_partition_parser(subparsers)


def run_bench_command(args: argparse.Namespace) -> int:
    from cqrs_core.tools import bench

    if args.through and not args.url:
        return fail("--through needs --url, the server the pooler is in front of.")
    if args.peer and _peer_missing():
        return fail(
            "--peer needs the eventsourcing library: install the development tools (make install-dev)."
        )
    report = bench.run_bench(
        through=args.through,
        quick=args.quick,
        full=args.full,
        events=args.events,
        url=args.url,
        log=None if args.json else sys.stderr,
        peer=args.peer,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else bench.format_report(report))
    return EXIT_OK


# ---------------------------------------------------------------- bench --peer


def _add_peer_argument(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--peer",
        action="store_true",
        help="also run the writer processes' creates through the Python eventsourcing library "
        "(a development dependency: make install-dev), on the same server, in the same run",
    )


def _peer_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("eventsourcing") is None


def run_snapshot_bench_command(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cqrs_core.tools.bench.snapshots import format_snapshot_load, run_snapshot_bench

    result = run_snapshot_bench(args.events, args.url, args.runs, log=None if args.json else sys.stderr)
    print(json.dumps(asdict(result), indent=2) if args.json else format_snapshot_load(result))
    return EXIT_OK


# ---------------------------------------------------------------- bench-pages


def run_page_bench_command(args: argparse.Namespace) -> int:
    from cqrs_core.tools import page_bench

    results = page_bench.time_pages(
        args.workflows, args.runs, args.url, lambda line: print(f"bench-pages: {line}", file=sys.stderr)
    )
    if args.json:
        print(json.dumps({"workflows": args.workflows, "pages": results}, indent=2))
    else:
        print(page_bench.format_page_times(results, args.workflows))
    return EXIT_PROBLEM if any("error" in r for r in results) else EXIT_OK


def _add_viewer_parser(subparsers: argparse._SubParsersAction) -> None:
    from cqrs_core.tools.viewer_bench import QUICK, Plan

    full = Plan()
    p = subparsers.add_parser(
        "bench-viewers",
        help="open many real Chromium viewers on the served console and measure time to data, CPU, "
        "skipped lag samples and command latency",
        description="Serve the console as `make run` does on a fresh, seeded database (or use --url), run a "
        "steady command load from a separate process, open headless Chromium viewers one after another "
        "(Overview, Projections, Workflows, Statistics in turn), leave them idle, then open new viewers "
        "one at a time. Needs Chromium and Playwright (the development tools).",
    )

    def default(name: str) -> str:
        return f"default {getattr(full, name):g}; --quick {getattr(QUICK, name):g}"

    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test (about a minute)")
    p.add_argument("--viewers", type=positive_int, metavar="N", help=f"tabs to open ({default('viewers')})")
    p.add_argument(
        "--workflows", type=positive_int, metavar="W", help=f"workflows to seed ({default('workflows')})"
    )
    p.add_argument(
        "--rate",
        type=bounded_float(10_000),
        metavar="R",
        help=f"commands per second of the steady load ({default('rate')})",
    )
    p.add_argument(
        "--seconds",
        type=bounded_float(3_600),
        metavar="S",
        help=f"seconds measured with every tab idle ({default('seconds')})",
    )
    p.add_argument(
        "--open-interval",
        type=bounded_float(60),
        metavar="S",
        help=f"seconds between two tabs opening ({default('open_interval')})",
    )
    p.add_argument(
        "--probes",
        type=positive_int,
        metavar="P",
        help=f"new viewers timed one at a time while the others are open ({default('probes')})",
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help="measure the app already running at URL on this machine (its CPU is the process listening "
        "there); nothing is seeded, and the command load writes to the database configured here",
    )
    p.add_argument(
        "--browser-cpus",
        type=_cpu_list,
        metavar="LIST",
        help="pin Chromium to these CPUs (e.g. 1 or 0,1 or 0-1), so that it cannot take the app's cores",
    )
    p.add_argument(
        "--chromium",
        type=Path,
        default=full.chromium,
        metavar="PATH",
        help=f"the Chromium binary (default {full.chromium})",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    p.set_defaults(handler=run_viewer_bench_command)


def _cpu_list(value: str) -> frozenset[int]:
    cpus: set[int] = set()
    try:
        for part in value.split(","):
            low, _, high = part.strip().partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a CPU list such as 1 or 0,1 or 0-1") from None
    usable = os.sched_getaffinity(0)
    if not cpus or not cpus <= usable:
        raise argparse.ArgumentTypeError(f"choose among the CPUs this process may use: {sorted(usable)}")
    return frozenset(cpus)


def run_viewer_bench_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cqrs_core.tools.viewer_bench import QUICK, Plan, run_viewer_bench
    from cqrs_core.tools.viewer_browser import BenchProblem
    from cqrs_core.tools.viewer_report import format_report

    plan = QUICK if args.quick else Plan()
    given = {
        name: getattr(args, name)
        for name in ("viewers", "workflows", "rate", "seconds", "open_interval", "probes")
        if getattr(args, name) is not None
    }
    plan = replace(plan, **given, browser_cpus=args.browser_cpus, chromium=args.chromium)
    if args.json is not None and not args.json.parent.is_dir():
        raise BenchProblem(f"Cannot write {args.json}: its folder does not exist.")
    if args.url:
        plan = replace(plan, url=args.url, database_url=database_url(get_settings()))
    report = run_viewer_bench(plan, log=sys.stderr)
    print(format_report(report))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise BenchProblem(f"Cannot write {args.json}: {exc.strerror or exc}.") from exc
    return EXIT_OK


# ---------------------------------------------------------------- bench-partitions


def _add_partition_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench-partitions",
        help="catch-up of the log by 1, 2 and 4 worker processes over partitioned projections",
        description="On a fresh scratch database, append the log once, then time the catch-up of every "
        "projection from zero by one worker over unsplit projections, and by 1, 2 and 4 `cqrs-console worker` "
        "processes over projections split into --partitions partitions.",
    )
    p.add_argument(
        "--events",
        type=positive_int,
        default=200_000,
        metavar="N",
        help="events in the log (default 200,000)",
    )
    p.add_argument(
        "--partitions",
        type=positive_int,
        default=4,
        metavar="K",
        help="partitions per projection (default 4)",
    )
    p.add_argument(
        "--workers",
        type=_worker_counts,
        default=(1, 2, 4),
        metavar="LIST",
        help="worker counts to measure, e.g. 1,2,4 (the default)",
    )
    p.add_argument(
        "--url",
        default=None,
        metavar="URL",
        type=server_url,
        help="server to create a scratch database on (default: temporary embedded)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_partition_bench_command)


def _worker_counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value[:40]!r} is not a list of worker counts such as 1,2,4"
        ) from None
    if not counts or any(not 1 <= c <= 64 for c in counts):
        raise argparse.ArgumentTypeError("worker counts are whole numbers from 1 to 64, such as 1,2,4")
    return counts


def run_partition_bench_command(args: argparse.Namespace) -> int:
    from cqrs_core.tools.bench.partitions import format_partition_report, run_partition_bench

    if args.partitions > 64:
        return fail("--partitions is at most 64.")
    report = run_partition_bench(
        args.events, args.workers, args.partitions, args.url, log=None if args.json else sys.stderr
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_partition_report(report))
    return EXIT_OK
