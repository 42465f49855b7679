"""CQRS_LOG_LEVEL reaches the app process (issue 12, item 18): app.py applies it on every run,
to the console's own loggers, and their records reach stderr."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cqrs_core.infra.config import get_settings
from cqrs_core.infra.logging_setup import OWN_LOGGERS, apply_log_level

APP = Path(__file__).resolve().parents[2] / "app.py"
UNREACHABLE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_levels = {name: logging.getLogger(name).level for name in (*OWN_LOGGERS, "apscheduler", "")}
    yield root
    root.handlers[:] = saved_handlers
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def test_debug_records_of_the_console_reach_stderr_and_libraries_stay_quiet(restore_logging, capsys):
    root = restore_logging
    root.handlers.clear()  # as in a fresh `streamlit run` process: nothing on the root logger
    root.setLevel(logging.WARNING)

    apply_log_level("DEBUG")
    apply_log_level("DEBUG")  # every script run calls it: one handler, not one per run

    assert len(root.handlers) == 1
    logging.getLogger("cqrs_core.projections.runner").debug("batch of %d", 50)
    logging.getLogger("cqrs_console.app").info("page opened")
    logging.getLogger("apscheduler.scheduler").info("Running job")
    err = capsys.readouterr().err
    assert "DEBUG cqrs_core.projections.runner: batch of 50" in err
    assert "INFO cqrs_console.app: page opened" in err
    assert "Running job" not in err


def test_warning_level_silences_the_consoles_info(restore_logging, capsys):
    root = restore_logging
    root.handlers.clear()
    apply_log_level("WARNING")
    logging.getLogger("cqrs_core.infra.db").info("started the embedded server")
    logging.getLogger("cqrs_core.infra.db").warning("disk nearly full")
    err = capsys.readouterr().err
    assert "started the embedded server" not in err and "disk nearly full" in err


def test_an_existing_root_handler_is_used_as_it_is(restore_logging):
    root = restore_logging
    handler = logging.NullHandler()
    root.handlers[:] = [handler]
    apply_log_level("INFO")
    assert root.handlers == [handler]


@pytest.mark.parametrize("level", ["DEBUG", "ERROR"])
def test_the_app_applies_cqrs_log_level_on_its_first_run(restore_logging, monkeypatch, level):
    for name in [k for k in os.environ if k.startswith("CQRS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CQRS_LOG_LEVEL", level)
    monkeypatch.setenv("CQRS_DATABASE_URL", UNREACHABLE)  # the level applies before the database is opened
    monkeypatch.setenv("CQRS_RUN_PROJECTIONS", "false")
    get_settings.cache_clear()
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        AppTest.from_file(str(APP), default_timeout=30).run()
    finally:
        get_settings.cache_clear()
    for name in OWN_LOGGERS:
        assert logging.getLogger(name).level == getattr(logging, level), name
