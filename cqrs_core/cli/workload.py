"""`demo seed|load|reset`: demo data, a live load and a clean slate."""

from __future__ import annotations

import argparse
import getpass
import random
import sys
import time
from typing import TextIO

from cqrs_core.cli.arguments import bounded_float, positive_int
from cqrs_core.cli.database import database_url
from cqrs_core.infra.config import get_settings
from cqrs_core.infra.db import make_engine, migrate, redact, runtime_connection
from cqrs_core.service import CQRSService
from cqrs_core.tools.workload import runners
from cqrs_core.tools.workload.runners import SEED_BATCH_WORKFLOWS

EXIT_OK, EXIT_PROBLEM = 0, 1


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="demo data: seed workflows, run a live load, reset")
    actions = demo.add_subparsers(dest="demo_command", metavar="ACTION", required=True)

    seed = actions.add_parser("seed", help="create realistic workflows with back-filled lifecycles")
    seed.add_argument(
        "--workflows",
        type=positive_int,
        default=1000,
        metavar="N",
        help="how many workflows to create (default 1000)",
    )
    seed.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="random seed; the same seed gives the same workflows (default: a new one, printed)",
    )
    seed.add_argument(
        "--days",
        type=bounded_float(36_500),
        default=90.0,
        metavar="D",
        help="spread the workflows over the last D days (default 90)",
    )
    seed.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        metavar="T",
        help="batches executed in parallel (default 2: one decides while the other writes)",
    )
    seed.add_argument(
        "--batch",
        type=positive_int,
        default=SEED_BATCH_WORKFLOWS,
        metavar="B",
        help=f"workflows per transaction (default {SEED_BATCH_WORKFLOWS}; "
        "1 = every command on its own, as the forms send them)",
    )
    seed.set_defaults(handler=run_seed)

    load = actions.add_parser("load", help="send commands at a steady rate and report what was achieved")
    load.add_argument(
        "--rate", type=bounded_float(1_000_000), required=True, metavar="R", help="commands per second"
    )
    load.add_argument("--duration", type=bounded_float(604_800), required=True, metavar="S", help="seconds")
    load.add_argument(
        "--threads", type=positive_int, default=4, metavar="T", help="sending threads (default 4)"
    )
    load.add_argument(
        "--seed", type=int, default=None, metavar="S", help="random seed of the generated workflows"
    )
    load.set_defaults(handler=run_load)

    reset = actions.add_parser("reset", help="delete every event, command and read-model row")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(handler=run_reset)


def _service(threads: int) -> CQRSService:
    settings = get_settings()
    owner_url = database_url(settings)
    migrate(settings.direct_database_url or owner_url)  # never through a pooler
    url, role = runtime_connection(settings, owner_url)  # the runtime role's rights, not the owner's
    direct = settings.direct_database_url if settings.behind_pooler else None
    return runners.traffic_service(settings, url, role, pool_size=max(10, threads + 2), direct_url=direct)


# ---------------------------------------------------------------- demo seed


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second; without a
    terminal, one line per tenth of the work."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()
        self._drawn = 0.0
        self._tenth = -1

    def update(self, done: int, total: int, commands: int) -> None:
        now = time.perf_counter()
        tenth = done * 10 // max(1, total)
        if self.tty and now - self._drawn < 0.1 and done < total:
            return
        if not self.tty and tenth == self._tenth:
            return
        self._drawn, self._tenth = now, tenth
        elapsed = now - self.started
        rate = commands / elapsed if elapsed > 0 else 0.0
        eta = (total - done) * elapsed / done if done else 0.0
        filled = done * 30 // max(1, total)
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} {self.label}  "
            f"{rate:,.0f} commands/s  ETA {eta:.0f} s"
        )
        self.stream.write(f"\r{line}" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0.0


def run_seed(args: argparse.Namespace) -> int:

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    service = _service(args.threads)
    bar = ProgressBar(args.workflows, "workflows")
    try:
        report = runners.seed(
            service,
            args.workflows,
            seed=seed,
            days=args.days,
            threads=args.threads,
            batch=args.batch,
            progress=bar.update,
        )
    except KeyboardInterrupt:
        bar.close()  # end the bar's line before the message
        print(
            f"Interrupted. To finish, run `demo seed --workflows {args.workflows} --seed {seed}` again: "
            "commands that already ran are skipped.",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
        service.close()
    new = report.commands - report.duplicates
    print(
        f"Seeded {report.workflows:,} workflows over the last {args.days:g} days with seed {seed}: "
        f"{report.commands:,} commands, {report.events:,} events in {report.seconds:.1f} s "
        f"({report.commands_per_second:,.0f} commands/s on {report.threads} threads)."
    )
    if report.duplicates:
        print(f"{report.duplicates:,} commands had already run with this seed; {new:,} were new.")
    outcomes = ", ".join(f"{n:,} {o}" for o, n in report.outcomes.most_common())
    print(f"Lifecycles: {outcomes}.")
    if report.failed_workflows:
        print(f"{report.failed_workflows:,} workflows stopped at a refused command:", file=sys.stderr)
        for message, count in report.errors.most_common(5):
            print(f"  {count:,} × {message}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


# ---------------------------------------------------------------- demo load


def run_load(args: argparse.Namespace) -> int:

    service = _service(args.threads)
    print(
        f"Sending {args.rate:g} commands/s for {args.duration:g} s on {args.threads} threads "
        f"(Ctrl-C stops early)…",
        file=sys.stderr,
    )
    try:
        report = runners.run_steady_load(
            service, rate=args.rate, duration=args.duration, threads=args.threads, seed=args.seed
        )
    finally:
        service.close()
    print(
        f"Sent {report.commands:,} commands in {report.elapsed_seconds:.1f} s: "
        f"{report.achieved_rate:,.1f} commands/s achieved of {report.target_rate:g} targeted."
    )
    print(
        f"Latency: p50 {report.p50_ms:.1f} ms, p95 {report.p95_ms:.1f} ms, p99 {report.p99_ms:.1f} ms, "
        f"max {report.max_ms:.1f} ms; started late by p95 {report.late_p95_ms:.1f} ms"
        + (f"; {report.dropped:,} scheduled commands were not sent in time." if report.dropped else ".")
    )
    errors = sum(report.errors.values())
    if errors:
        detail = ", ".join(f"{n} {category}" for category, n in sorted(report.errors.items()))
        print(f"{errors:,} commands were refused ({detail}).", file=sys.stderr)
    if report.achieved_rate < 0.9 * report.target_rate:
        print(
            "The system could not keep up with that rate; try fewer commands/s or more threads.",
            file=sys.stderr,
        )
    return EXIT_PROBLEM if errors or report.achieved_rate < 0.9 * report.target_rate else EXIT_OK


# ---------------------------------------------------------------- demo reset


def run_reset(args: argparse.Namespace) -> int:
    from cqrs_core.ops.reset import reset

    settings = get_settings()
    # Directly, not through a pooler: one audited transaction, as the runtime role (SET ROLE).
    url = settings.direct_database_url or database_url(settings)
    if not args.yes:
        try:
            answer = input(f"Delete every event, command and read-model row in {redact(url)}? Type 'yes': ")
        except EOFError:
            answer = ""
        if answer.strip().lower() != "yes":
            print("Nothing was deleted.")
            return EXIT_OK
    migrate(url)
    runtime_url, role = runtime_connection(settings, url)
    engine = make_engine(runtime_url, pool_size=1, role=role)
    try:
        # Whoever runs the command line here is the local admin; the audit row names them.
        report = reset(engine, actor=f"{getpass.getuser()} (command line)")
    finally:
        engine.dispose()
    print(
        f"Deleted {report.events:,} events and {report.commands:,} commands; emptied {len(report.tables)} tables "
        "and put every projection back at the start of the log."
    )
    return EXIT_OK
