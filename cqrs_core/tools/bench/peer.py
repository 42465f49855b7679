"""The bench's peer: the same one-event creates through the Python `eventsourcing` library
(a development dependency, imported only by `bench --peer`), on the same server and database,
with the library's documented PostgreSQL settings: a connection pool, CREATE_TABLE, no debug.
Its inserts take a table lock (see its `postgres.py`), ours do not (`eventlog/store.py`)."""

from __future__ import annotations

from collections.abc import Callable

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from sqlalchemy.engine import make_url


class BenchWorkflow(Aggregate):
    """A workflow as the library's aggregate: created with the fields of our create command."""

    def __init__(self, title: str, research_question: str, methodology: str, tags: list[str]) -> None:
        self.title = title
        self.research_question = research_question
        self.methodology = methodology
        self.tags = tags


def peer_application(url: str) -> Application:
    """The library's application on the database of `url` (creating its tables if missing)."""
    u = make_url(url)
    host = u.query.get("host") or u.host or "127.0.0.1"
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": u.database or "",
        "POSTGRES_HOST": host if isinstance(host, str) else host[0],
        "POSTGRES_PORT": str(u.port or u.query.get("port") or 5432),
        "POSTGRES_USER": u.username or "",
        "POSTGRES_PASSWORD": u.password or "",
        "POSTGRES_POOL_SIZE": "2",
        "CREATE_TABLE": "y",
    }
    return Application(env=env)


def peer_writer(url: str) -> Callable[[], None]:
    """One new one-event aggregate saved per call (the library's equivalent of our create)."""
    app = peer_application(url)
    fields = (
        "Bench: effect of peer instruction on course completion",
        "Does peer instruction improve course completion among first-year students?",
        "experimental",
        ["bench", "education"],
    )

    def write() -> None:
        app.save(BenchWorkflow(*fields))

    return write
