"""`bench` and `bench-pages`: the benchmarks, each on a fresh, isolated database."""

from __future__ import annotations

import argparse
import json
import sys

from cqrs_core.cli.workload import _positive_int

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
        type=_positive_int,
        default=None,
        metavar="N",
        help="events for catch-up and rebuild (default 200,000; --quick 5,000; --full 1,000,000)",
    )
    bench.add_argument(
        "--url",
        default=None,
        metavar="URL",
        help="run on this PostgreSQL server (a scratch database is created and dropped) "
        "instead of a temporary embedded one",
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(handler=run_bench_command)

    pages = subparsers.add_parser("bench-pages", help="time every dashboard page against a large read side")
    pages.add_argument(
        "--workflows", type=int, default=100_000, help="read-model rows to fill (default 100,000)"
    )
    pages.add_argument("--runs", type=int, default=5, help="timed runs per page and mode")
    pages.add_argument(
        "--url", default=None, help="server to create a scratch database on (default: temporary embedded)"
    )
    pages.add_argument("--json", action="store_true")
    pages.set_defaults(handler=run_page_bench_command)


# ---------------------------------------------------------------- bench


def run_bench_command(args: argparse.Namespace) -> int:
    from cqrs_core.tools import bench

    report = bench.run_bench(
        quick=args.quick,
        full=args.full,
        events=args.events,
        url=args.url,
        log=None if args.json else sys.stderr,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else bench.format_report(report))
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
