"""Not collected by the suite (the name does not start with `test_`): test_session_isolation.py
runs it as a pytest session of its own, with CQRS_DATA_DIR naming a "user" data directory. It
reaches an embedded server every way a test can, and leaves one running on purpose."""

import subprocess
import sys

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import resolve_database_url


def test_uses_the_session_database(db_url):
    engine = create_engine(db_url, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()


def test_settings_resolve_to_an_embedded_server_in_process():
    assert resolve_database_url(load_settings())


def test_a_child_command_starts_the_configured_server_and_leaves_it_running():
    result = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "db", "start"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
