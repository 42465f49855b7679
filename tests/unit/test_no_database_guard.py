"""The guard of tests/unit/conftest.py: a unit test that would start PostgreSQL, here or in a
process it starts, is caught."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cqrs_core.infra.db import start_embedded_server


def test_starting_the_embedded_server_in_the_test_process_is_caught(database_attempts, tmp_path):
    with pytest.raises(RuntimeError, match="tests/integration"):
        start_embedded_server(tmp_path, "nothing")

    assert database_attempts.seen()
    database_attempts.forget()


def test_a_console_process_that_would_start_the_embedded_server_is_caught(database_attempts, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env["CQRS_DATA_DIR"] = str(tmp_path)  # no CQRS_DATABASE_URL: the embedded server

    run = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "db", "start"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert run.returncode != 0
    assert any("tried to start the embedded PostgreSQL server" in line for line in database_attempts.seen())
    database_attempts.forget()
