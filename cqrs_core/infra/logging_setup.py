"""CQRS_LOG_LEVEL for the Streamlit app process (the command line applies it in cli.main).

Streamlit configures only its own `streamlit.*` loggers (which do not propagate), so without
this the console's INFO and DEBUG records were dropped by Python's last-resort handler,
whatever CQRS_LOG_LEVEL said.
"""

from __future__ import annotations

import logging
import sys

# The console's own loggers: the core (`cqrs_core.*`) and the app and its pages (`cqrs_console.*`).
OWN_LOGGERS = ("cqrs_core", "cqrs_console")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def apply_log_level(level: str) -> None:
    """Log the console's own records at `level` (DEBUG, INFO, WARNING, ERROR) to stderr.

    Libraries keep their own levels (APScheduler alone logs every job run at INFO). Safe to call
    on every script run: the stderr handler is added once, and only when the root logger has
    none (the command line's, or a test runner's, is used as it is)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
