"""The `cqrs-console` command line (also `python -m cqrs_core`).

Each module in `COMMAND_MODULES` contributes sub-commands through `add_parsers(subparsers)`;
every sub-command sets `handler`, a function `(args) -> int` returning the exit code.

Exit codes: 0 done, 1 the command ran and found a problem (e.g. `health` is unhealthy),
2 bad configuration or a failure the user has to act on (one line on stderr, no traceback;
`--verbose` logs the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence

from cqrs_core.infra.config import SettingsError, get_settings
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import CQRSError

log = logging.getLogger("cqrs_core.cli")

COMMAND_MODULES: tuple[str, ...] = (
    "cqrs_core.cli.database",
    "cqrs_core.cli.backup",
    "cqrs_core.cli.health",
    "cqrs_core.cli.projections",
    "cqrs_core.cli.schema",
    "cqrs_core.cli.workload",
    "cqrs_core.cli.bench",
    "cqrs_core.cli.auth",
    "cqrs_core.cli.serve",
)

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cqrs-console",
        description="Operate the Research Workflow Console: database, projections, demo data, benchmark, health.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output, including tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The embedded server's lock lives in a temp dir when XDG_RUNTIME_DIR is unset; that is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = get_settings()
        if not args.verbose:
            # Command output is for people; INFO chatter (Alembic, the embedded server) only on request.
            level = logging.getLevelName(settings.log_level)
            logging.getLogger().setLevel(level if level == logging.DEBUG else max(level, logging.WARNING))
        with translate_db_errors():
            return int(args.handler(args))
    except SettingsError as exc:
        return fail(str(exc))
    except CQRSError as exc:
        log.debug("%s failed", args.command, exc_info=True)
        return fail(exc.user_message)
    except KeyboardInterrupt:
        return 130


def fail(message: str) -> int:
    """Print one line for a person and return the error exit code."""
    print(f"cqrs-console: {message}", file=sys.stderr)
    return EXIT_ERROR
