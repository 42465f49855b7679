"""Reading alerts from their streams in the event log (never from the read model: the evaluator
decides on the log, like every writer). A partial index on the alert streams (migration 0015)
keeps this to the alert events, however long the log."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import groupby

from sqlalchemy import Engine, text

from cqrs_core.domain.alert import Alert
from cqrs_core.domain.events import alert_id_of, alert_stream_id
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import CorruptStreamError

log = logging.getLogger(__name__)

_COLUMNS = "e.stream_id, e.version, e.event_type, e.schema_version, e.payload"
# The literal LIKE matches the partial index's predicate, so the planner uses it.
_OPEN_SQL = text(
    f"""SELECT {_COLUMNS} FROM events e
        WHERE e.stream_id LIKE 'alert-%'
          AND NOT EXISTS (SELECT 1 FROM events r WHERE r.stream_id LIKE 'alert-%'
                          AND r.stream_id = e.stream_id AND r.event_type = 'AlertResolved')
        ORDER BY e.stream_id, e.version"""
)
_SOME_SQL = text(
    f"SELECT {_COLUMNS} FROM events e WHERE e.stream_id = ANY(CAST(:streams AS text[]))"
    " ORDER BY e.stream_id, e.version"
)


def open_alerts(engine: Engine) -> list[Alert]:
    """Every alert not resolved, as its stream says now."""
    with translate_db_errors(), engine.connect() as conn:
        return _fold(conn.execute(_OPEN_SQL))


def read_alerts(engine: Engine, alert_ids: Iterable[str]) -> list[Alert]:
    """These alerts as their streams say now (an id without a stream is left out)."""
    streams = sorted({alert_stream_id(a) for a in alert_ids})
    if not streams:
        return []
    with translate_db_errors(), engine.connect() as conn:
        return _fold(conn.execute(_SOME_SQL, {"streams": streams}))


def _fold(rows: Iterable) -> list[Alert]:
    alerts = []
    for stream_id, events in groupby(rows, key=lambda r: r.stream_id):
        try:
            alerts.append(Alert.from_stored(alert_id_of(stream_id), events))
        except CorruptStreamError as exc:  # one broken stream must not stop the others
            log.error("alert stream %r cannot be read: %s", stream_id, exc.user_message)
    return alerts
