"""Login roles for tests: the least-privilege roles are NOLOGIN groups, so a test logs in as a login
role of its own that is granted one of them, as an admin would set it up. Roles are cluster-wide
and the test server may be shared, so each name is new and the role is dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


@contextlib.contextmanager
def login_as(db_url: str, group: str) -> Iterator[tuple[Engine, str]]:
    """(engine, URL) of a fresh LOGIN role that is a member of `group` only; `db_url` is the owner's."""
    name = f"cqrs_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN IN ROLE "{group}"')
    url = make_url(db_url).set(username=name).render_as_string(hide_password=False)
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield engine, url
    finally:
        engine.dispose()
        with admin.connect() as conn:
            # Its sessions (a service's pools) are closed by now; objects it planted go with it.
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :n"), {"n": name}
            )
            conn.exec_driver_sql(f'DROP OWNED BY "{name}"')
            conn.exec_driver_sql(f'DROP ROLE "{name}"')
        admin.dispose()
