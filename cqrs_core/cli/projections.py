"""Command-line verbs of the read side: `worker`, `projections ...`, `parked ...`, `verify`.

`cqrs_core/cli/__init__.py` calls `add_parsers(subparsers)`; every verb stores its handler as `handler`,
which takes the parsed namespace and returns the exit code (0 done, 1 the command found a
problem: drift, events still parked). Errors (CQRSError) propagate to `cli.main`, which prints
their one-line message and exits 2."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run the projections and background jobs until SIGTERM")
    worker.add_argument(
        "--once", action="store_true", help="catch up, sample lag, refresh the views, then exit"
    )
    worker.set_defaults(handler=cmd_worker)

    projections = subparsers.add_parser("projections", help="status and control of the projections")
    verbs = projections.add_subparsers(dest="projections_command", required=True, metavar="VERB")
    status = verbs.add_parser("status", help="state, position, lag and rate of every projection")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)
    for verb, handler, text in (
        ("pause", cmd_pause, "stop applying events"),
        ("resume", cmd_resume, "apply events again"),
    ):
        p = verbs.add_parser(verb, help=f"{text} to one projection")
        p.add_argument("name", help="projection name")
        p.set_defaults(handler=handler)
    rebuild = verbs.add_parser(
        "rebuild", help="replay the log into shadow tables and swap them in (no downtime)"
    )
    rebuild.add_argument("name", help="projection name")
    rebuild.set_defaults(handler=cmd_rebuild)
    retry = verbs.add_parser("retry-parked", help="apply parked events again")
    retry.add_argument(
        "--id", dest="ids", type=int, action="append", help="a parked event id (repeatable; default all)"
    )
    retry.set_defaults(handler=cmd_retry_parked)

    parked = subparsers.add_parser("parked", help="events a projection could not apply")
    pverbs = parked.add_subparsers(dest="parked_command", required=True, metavar="VERB")
    listing = pverbs.add_parser("list", help="list parked events")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--projection", help="only this projection")
    listing.add_argument("--all", action="store_true", help="include retried and discarded ones")
    listing.set_defaults(handler=cmd_parked_list)
    pretry = pverbs.add_parser("retry", help="apply parked events again")
    pretry.add_argument(
        "--id", dest="ids", type=int, action="append", help="a parked event id (repeatable; default all)"
    )
    pretry.set_defaults(handler=cmd_retry_parked)
    discard = pverbs.add_parser("discard", help="give up on parked events")
    discard.add_argument(
        "--id", dest="ids", type=int, action="append", required=True, help="a parked event id (repeatable)"
    )
    discard.set_defaults(handler=cmd_discard_parked)

    verify = subparsers.add_parser(
        "verify", help="replay the log and compare with the live read models; exit 1 on drift"
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=cmd_verify)


# ---------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _service(purpose: str) -> Iterator[Any]:
    """The service of a long-running verb (the worker): its projections, command bus and jobs."""
    from cqrs_core.infra.config import get_settings
    from cqrs_core.infra.db import migrate, resolve_database_url, runtime_connection
    from cqrs_core.service import CQRSServiceBuilder

    settings = get_settings()
    # The worker holds LISTEN and session advisory locks: the server itself, never a pooler.
    owner_url = settings.direct_database_url or resolve_database_url(settings)
    migrate(owner_url)
    url, role = runtime_connection(settings, owner_url)  # the runtime role's rights, not the owner's
    service = (
        CQRSServiceBuilder(settings)
        .with_database_url(url)
        .with_database_role(role)
        .with_migrations(False)
        .with_pool_size(4)
        .with_application_name(f"cqrs-console {purpose}")
        .build()
    )
    try:
        yield service
    finally:
        service.close()


@contextlib.contextmanager
def _manager(purpose: str) -> Iterator[Any]:
    from cqrs_core.infra.config import get_settings
    from cqrs_core.infra.db import make_engine, migrate, resolve_direct_database_url, runtime_connection
    from cqrs_core.projections.engine.manager import ProjectionManager

    settings = get_settings()
    # The projections side keeps sessions (advisory locks, LISTEN, verify's scratch tables): never a pooler.
    owner_url = resolve_direct_database_url(settings)
    migrate(owner_url)
    url, role = runtime_connection(settings, owner_url)  # the runtime role's rights, not the owner's
    engine = make_engine(url, pool_size=4, application_name=f"cqrs-console {purpose}", role=role)
    manager = ProjectionManager(engine, settings)
    try:
        yield manager
    finally:
        manager.close(timeout=10)
        engine.dispose()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


class ProgressBar:
    """`[#####-----]  48%  4800/10000 events  2400 ev/s  ETA 2s` on stderr."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label, self.width = label, width
        self.started = time.monotonic()
        self.first: int | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:
            self.first = done
        fraction = done / total if total else 1.0
        filled = int(self.width * fraction)
        elapsed = time.monotonic() - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {(total - done) / rate:.0f}s" if rate > 0 and done < total else ""
        line = (
            f"\r{self.label} [{'#' * filled}{'-' * (self.width - filled)}] {fraction:4.0%} "
            f"{done}/{total} events  {rate:.0f} ev/s  {eta}"
        )
        sys.stderr.write(line.ljust(100))
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


# ---------------------------------------------------------------- handlers


def cmd_worker(args: argparse.Namespace) -> int:
    from cqrs_core.ops.metrics_export import MetricsPortUnavailable, serve_metrics

    with _service("worker") as service:
        manager = service.projections
        runtime = service.projection_runtime()  # the projections, their jobs and the alert evaluator
        if args.once:
            applied = runtime.catch_up_once()
            print(f"caught up: {applied} events applied")
            return 0
        settings = manager.settings
        try:
            stop_metrics = serve_metrics(settings.metrics_port, settings.metrics_address, lambda: manager)
        except MetricsPortUnavailable as exc:
            print(f"cqrs-console: {exc}", file=sys.stderr)
            return 2
        try:
            return runtime.run_until_stopped()
        finally:
            if stop_metrics is not None:
                stop_metrics()


def cmd_status(args: argparse.Namespace) -> int:
    with _manager("status") as manager:
        statuses = manager.status()
    if args.json:
        _print_json(statuses)
        return 0
    rows = []
    for s in statuses:
        state = s.state
        if s.state == "rebuilding" and s.rebuild_total:
            state += f" {s.rebuild_done}/{s.rebuild_total}"
            if s.rebuild_eta_seconds is not None:
                state += f" ETA {s.rebuild_eta_seconds:.0f}s"
        rows.append(
            [
                s.name,
                state,
                s.position,
                s.head,
                s.lag_events,
                f"{s.lag_seconds:.1f}",
                f"{s.events_per_second:.0f}",
                s.parked or None,
                s.owner,
                (s.last_error or "")[:80] or None,
            ]
        )
    print(
        _table(
            [
                "projection",
                "state",
                "position",
                "head",
                "lag",
                "lag s",
                "ev/s",
                "parked",
                "owner",
                "last error",
            ],
            rows,
        )
    )
    split = [(s.name, p) for s in statuses for p in s.partitions]
    if split:
        print()
        print(
            _table(
                ["projection", "partition", "held by", "position", "behind head", "applied"],
                [
                    [
                        name,
                        f"{p.partition + 1}/{p.partitions}",
                        p.owner or "nobody",
                        p.position,
                        p.lag_events,
                        p.events_applied,
                    ]
                    for name, p in split
                ],
            )
        )
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with _manager("pause") as manager:
        manager.pause(args.name)
    print(f"{args.name}: paused (it stops after its current batch)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _manager("resume") as manager:
        manager.resume(args.name)
    print(f"{args.name}: running")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    bar = ProgressBar(args.name)
    try:
        with _manager("rebuild") as manager:
            result = manager.rebuild(args.name, progress=bar)
    finally:
        bar.finish()
    changed = ", ".join(f"{t} {n}" for t, n in result.rows_changed.items())
    print(
        f"{args.name}: rebuilt from {result.events} events in {result.seconds:.1f} s"
        f"{' (resumed)' if result.resumed else ''}; rows changed: {changed}"
    )
    return 0


def cmd_retry_parked(args: argparse.Namespace) -> int:
    with _manager("retry-parked") as manager:
        succeeded = manager.retry_parked(args.ids)
        still = [p for p in manager.parked() if args.ids is None or p.id in args.ids]
    print(f"retried: {succeeded} applied, {len(still)} still parked")
    return 1 if still else 0


def cmd_discard_parked(args: argparse.Namespace) -> int:
    with _manager("discard") as manager:
        discarded = manager.discard_parked(args.ids)
    print(f"discarded: {discarded}")
    return 0 if discarded == len(set(args.ids)) else 1


def cmd_parked_list(args: argparse.Namespace) -> int:
    with _manager("parked") as manager:
        parked = manager.parked(args.projection, status=None if args.all else "parked")
    if args.json:
        _print_json(parked)
        return 0
    if not parked:
        print("no parked events")
        return 0
    rows = [
        [
            p.id,
            p.projection,
            p.position,
            p.event_type,
            p.attempts,
            p.status,
            p.parked_at.strftime("%Y-%m-%d %H:%M:%S"),
            p.error[:70],
        ]
        for p in parked
    ]
    print(_table(["id", "projection", "position", "event", "attempts", "status", "parked at", "error"], rows))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cqrs_core.projections.engine.verify import verify
    from cqrs_core.write.snapshots import check_snapshots

    with _manager("verify") as manager:
        report = verify(manager.engine)
        snapshots = check_snapshots(manager.engine)
    ok = report.ok and snapshots.ok
    if args.json:
        _print_json(
            {
                "ok": ok,
                "seconds": report.seconds,
                "tables": report.tables,
                "problems": report.problems,
                "snapshots": snapshots,
            }
        )
    else:
        print("\n".join([*report.lines(), *snapshots.lines()]))
        if ok:
            print("verify: OK")
        elif not report.ok:
            print("verify: DRIFT — the live read models differ from a replay of the log")
        if not snapshots.ok:
            print("verify: DRIFT — workflow snapshots differ from a replay of their streams")
    return 0 if ok else 1
