"""Alembic environment. `cqrs_core.infra.db.migrate` passes an open connection (holding the
migration advisory lock); `alembic upgrade head` from the shell builds one from settings."""

from alembic import context
from sqlalchemy import create_engine

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from cqrs_core.infra.config import get_settings
    from cqrs_core.infra.db import resolve_database_url

    engine = create_engine(resolve_database_url(get_settings()))
    with engine.connect() as conn:
        context.configure(connection=conn, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()


run()
