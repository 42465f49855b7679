"""CQRS_PREPARED_STATEMENTS: the command and detail paths PREPARE their statements once per
connection, or, where a connection may not (behind a pooler in transaction mode), send them whole.
The pooler itself is in test_pgbouncer.py; here the same paths run on a direct connection."""

from __future__ import annotations

import pytest
from services import build_service
from sqlalchemy import text

from cqrs_core import CommandFactory, QueryFactory
from cqrs_core.infra.db import PreparedStatement, make_engine


def prepared_on(conn) -> list[str]:
    return list(conn.execute(text("SELECT name FROM pg_prepared_statements ORDER BY name")).scalars())


@pytest.mark.parametrize("prepare", [True, False])
def test_a_prepared_statement_gives_the_same_rows_prepared_or_sent_whole(db_url, prepare):
    engine = make_engine(db_url, pool_size=1, prepare=prepare)
    # A literal % and a parameter used twice: the whole form must escape one and name the other.
    statement = PreparedStatement("SELECT :word || '%' || :word AS twice, :n::int + 1 AS next", ("word", "n"))
    try:
        with engine.connect() as conn:
            rows = [statement.run(conn, {"word": "50", "n": 41}, timeout_ms=5000).one() for _ in range(2)]
            assert [tuple(r) for r in rows] == [("50%50", 42)] * 2
            assert prepared_on(conn) == ([statement.name] if prepare else [])
    finally:
        engine.dispose()


@pytest.mark.parametrize(("setting", "prepared"), [("auto", True), ("on", True), ("off", False)])
def test_the_setting_decides_whether_the_command_and_detail_paths_prepare(db_url, setting, prepared):
    service = build_service(db_url, prepared_statements=setting)
    try:
        created = service.execute_command(
            CommandFactory("alice").create_research_workflow(
                title="Prepared or not", research_question="Does it matter?", methodology="exploratory"
            )
        )
        service.projections.catch_up()
        detail = service.execute_query(QueryFactory().get_workflow(created.aggregate_id), cache=False)
        assert detail.workflow["title"] == "Prepared or not"
        # One connection in each pool so far: the statements it prepared are on it.
        with service.command_engine.connect() as conn:
            commands = prepared_on(conn)
        with service.read_engine.connect() as conn:
            queries = prepared_on(conn)
    finally:
        service.close()

    assert bool(commands) is prepared and bool(queries) is prepared, (commands, queries)
    assert all(name.startswith("cqrs_q_") for name in queries)
