"""The command pipeline: authorize → validate → rate-limit → dedupe → load, decide, append
(retrying version conflicts) → record the result, all under a server-side statement timeout.
Workflow commands decide on the ResearchWorkflow aggregate, alert commands on the Alert
aggregate (and announce the alert's change once it is committed); operator commands act on
the projections."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg2.errors
from cachetools import LRUCache
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from cqrs_core.domain.alert import Alert
from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.domain.events import (
    DomainEvent,
    alert_stream_id,
    event_from_payload,
    stream_id_for,
    workflow_id_of,
)
from cqrs_core.domain.workflow import ResearchWorkflow, may_change, snapshot_fingerprint
from cqrs_core.eventlog.audit import record_action, record_refusal
from cqrs_core.eventlog.snapshots import Snapshot, save_snapshot
from cqrs_core.eventlog.store import CommandRecord, EventMetadata, EventStore, NewEvent, StreamAppend
from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import DriverConnection, PreparedStatement, driver_connection, translate_db_errors
from cqrs_core.infra.errors import (
    AuthorizationError,
    BatchExceedsBurstError,
    CommandIdReusedError,
    ConcurrencyError,
    CorruptStreamError,
    CQRSError,
    InfrastructureError,
    NotFoundError,
    RateLimitedError,
    ValidationError,
)
from cqrs_core.infra.metrics import MetricsRecorder
from cqrs_core.infra.rate_limit import RateLimiter
from cqrs_core.write import commands as c
from cqrs_core.write.authorization import authorize
from cqrs_core.write.handlers import ProjectionControl, decide, decide_alert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventRef:
    event_type: str
    version: int
    position: int


@dataclass(frozen=True)
class CommandResult:
    """What a command did. `position` can be passed as `min_position` to a query to read
    your own write."""

    command_id: uuid.UUID
    command_type: str
    aggregate_id: str
    events: list[EventRef]
    position: int
    correlation_id: uuid.UUID
    duration_ms: float
    duplicate: bool = False  # True when this command_id had already been executed

    def to_json(self, fingerprint: str | None = None) -> dict[str, Any]:
        """The command log's record of this result, with the command's fingerprint when given
        (`repeat_result` compares it). The one definition of that record: a workflow command's
        append stores it with its events' positions filled in (`_record`)."""
        return _result_json(
            self.command_id,
            self.command_type,
            self.aggregate_id,
            [{"event_type": e.event_type, "version": e.version, "position": e.position} for e in self.events],
            self.position,
            self.correlation_id,
            self.duration_ms,
            fingerprint,
        )

    @classmethod
    def from_json(cls, d: dict[str, Any], duplicate: bool = False) -> CommandResult:
        return cls(
            command_id=uuid.UUID(d["command_id"]),
            command_type=d["command_type"],
            aggregate_id=d["aggregate_id"],
            events=[EventRef(**e) for e in d["events"]],
            position=d["position"],
            correlation_id=uuid.UUID(d["correlation_id"]),
            duration_ms=d["duration_ms"],
            duplicate=duplicate,
        )


def _result_json(
    command_id: uuid.UUID,
    command_type: str,
    aggregate_id: str,
    events: list[dict[str, Any]],
    position: int,
    correlation_id: uuid.UUID,
    duration_ms: float,
    fingerprint: str | None,
) -> dict[str, Any]:
    """`CommandResult.to_json`'s record, from its fields (`_record` has no result to hand yet)."""
    out = {
        "command_id": str(command_id),
        "command_type": command_type,
        "aggregate_id": aggregate_id,
        "events": events,
        "position": position,
        "correlation_id": str(correlation_id),
        "duration_ms": duration_ms,
    }
    if fingerprint is not None:
        out["fingerprint"] = fingerprint
    return out


def _in_batch(exc: CQRSError, i: int, total: int, cmd: c.Command) -> None:
    """Make `exc`'s message say which command of a batch it is about."""
    exc.user_message = f"Command {i + 1} of {total} ({cmd.command_type}): {exc.user_message}"
    exc.args = (exc.user_message,)
    exc.context["batch_index"] = i


def _log_refusal(what: str, exc: CQRSError) -> None:
    # A broken stream or database needs someone to act: log it loudly, with what names it.
    level = logging.ERROR if exc.severity == "critical" else logging.INFO
    log.log(level, "%s refused: %s (%s) %s", what, exc.user_message, exc.category, exc.context or "")


def _check_access(wf: ResearchWorkflow, cmd: c.WorkflowCommand) -> None:
    """Every command but a create needs an existing workflow, owned by the actor unless an admin."""
    if isinstance(cmd, c.CreateResearchWorkflow):
        return
    if not wf.exists:
        raise NotFoundError(f"Workflow {wf.workflow_id} does not exist.", workflow_id=wf.workflow_id)
    if not may_change(cmd.actor, cmd.role, wf.owner):
        raise AuthorizationError(
            f"Only the owner ({wf.owner}) or an admin can change this workflow.", actor=cmd.actor
        )


# What a repeat of a command id must match to count as the same command: everything but the
# stamps a retry may legitimately renew (a fresh correlation id, the business time a re-run seed
# recomputes, the role the actor acts in).
_NOT_CONTENT = {"command_id", "correlation_id", "occurred_at", "role"}


def fingerprint(cmd: c.Command) -> str:
    """A hash of what a command asks for: its type, actor and fields. The command log stores it,
    so a command id sent again with other content is refused, not answered with the first
    command's result. pydantic's JSON of a model is canonical for its class (fields in declared
    order, compact), and costs a few microseconds: it runs for every command. Hashed as
    `f"{command_type}\n{model_dump_json(exclude=...)}".encode()`, from the serializer's bytes
    (what model_dump_json decodes) without the round trip through str."""
    content = type(cmd).__pydantic_serializer__.to_json(cmd, exclude=_NOT_CONTENT)
    return hashlib.sha256(type(cmd).__name__.encode() + b"\n" + content).hexdigest()


def repeat_result(cmd: c.Command, print_: str, previous: dict[str, Any]) -> CommandResult:
    """The stored result of an earlier run of `cmd.command_id`, if that run was this same command;
    CommandIdReusedError if the id was used for a different one. `previous` is the command log's
    record with its `actor` column added (`_PREVIOUS`). A record written before fingerprints were
    stored is this command only if type, actor and target (the workflow, or the projection) match:
    a command id is visible to others (the event explorer), so the type alone would hand anyone
    another person's result for a command of theirs, and drop their change."""
    stored = previous.get("fingerprint")
    if stored is not None:
        same = stored == print_
    else:
        target = (
            str(cmd.workflow_id) if isinstance(cmd, c.WorkflowCommand) else getattr(cmd, "projection", None)
        )
        same = previous.get("actor") == cmd.actor and (
            target is None or previous.get("aggregate_id") == target
        )
    if not same or previous.get("command_type") != cmd.command_type:
        raise CommandIdReusedError(cmd.command_id, actor=cmd.actor, command_type=cmd.command_type)
    return CommandResult.from_json(previous, duplicate=True)


# Interactive commands may carry a business time only this close to now (clock skew between the
# sender and the database); only a trusted import (the demo seed) may back-date.
BUSINESS_TIME_SKEW = timedelta(minutes=5)


def check_business_time(cmd: c.Command, trusted_import: bool, now: datetime | None = None) -> None:
    at = cmd.occurred_at
    if at is None:
        return
    now = now or datetime.now(UTC)
    if at > now + BUSINESS_TIME_SKEW:
        raise ValidationError(
            "occurred at: a business time cannot lie in the future; leave it empty to use the "
            "time the command is recorded."
        )
    if not trusted_import and at < now - BUSINESS_TIME_SKEW:
        raise ValidationError(
            "occurred at: only a trusted import (such as the demo seed) may set a business time "
            "in the past; leave it empty to use the time the command is recorded."
        )


def replay(wf: ResearchWorkflow, rows: Sequence[Any], stream_id: str) -> None:
    """Fold stored rows (version, event_type, schema_version, payload) into `wf`, upcast and
    validated, refusing a stream that cannot be replayed: an unknown event type, a schema version
    it cannot bring up to date, a payload that does not fit, an event its history does not allow,
    a missing version."""
    for row in rows:
        if row.version != wf.version + 1:
            raise CorruptStreamError(
                f"Stream {stream_id} jumps from version {wf.version} to version {row.version} (an event is "
                "missing), so this workflow cannot be changed until an operator repairs the stream.",
                stream_id=stream_id,
                expected_version=wf.version + 1,
                found_version=row.version,
            )
        event = event_from_payload(
            row.event_type,
            row.payload,
            stream_id=stream_id,
            version=row.version,
            schema_version=row.schema_version,
        )
        wf.apply_stored(event, stream_id=stream_id, stored_type=row.event_type)


MAX_BATCH_COMMANDS = 10_000
AGGREGATE_CACHE_SIZE = 2_000  # workflows whose latest state the bus keeps (a few KB each)

# A command log record as `repeat_result` compares it: the stored result and who sent the command.
_PREVIOUS = "result || jsonb_build_object('actor', actor)"
_DEDUPE_SQL = f"SELECT {_PREVIOUS} FROM command_log WHERE command_id = :id"
# An operator command claims its command id before its action runs: the row, with its result,
# is inserted in a transaction that commits only once the action is done. A concurrent twin's
# insert waits for that transaction: it then finds the committed row (and returns its result)
# or, when the action failed and the claim was rolled back, claims the id itself.
_CLAIM_SQL = """INSERT INTO command_log (command_id, command_type, actor, aggregate_id, correlation_id, result)
                VALUES (:id, :type, :actor, :aggregate, :correlation, CAST(:result AS jsonb))
                ON CONFLICT (command_id) DO NOTHING RETURNING true"""

# An alert's stream, folded on every alert command (alerts have a handful of events each).
_ALERT_STREAM_SQL = (
    "SELECT version, event_type, schema_version, payload FROM events WHERE stream_id = :s ORDER BY version"
)

# Version conflicts are retried after an exponential backoff with jitter: attempt n waits between
# base * 2**n and twice that.
CONFLICT_BACKOFF_BASE_SECONDS = 0.004


class CommandBus:
    """Runs commands. Every statement it sends is a transaction of its own: the engine may be
    (and the service's is) in autocommit mode, so a command costs two round trips, a read and an
    atomic write, with no BEGIN or COMMIT of their own. Each statement carries its server-side
    timeout (`SET LOCAL statement_timeout` in the same query string)."""

    def __init__(
        self,
        engine: Engine,
        store: EventStore,
        settings: Settings,
        metrics: MetricsRecorder,
        limiter: RateLimiter,
        operator_commands: ProjectionControl | None = None,
        timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        alert_notify: Callable[[AlertNotice], None] | None = None,
        appended: Callable[[], None] | None = None,
    ) -> None:
        self.engine, self.store, self.settings = engine, store, settings
        # Called after every committed write when `engine`'s sessions leave announcing their
        # appends to this process (`make_engine(coalesced_notify=True)`, eventlog/notifier.py).
        self._appended = appended
        self.metrics, self.limiter = metrics, limiter
        # The handler of operator commands (None: this bus refuses them), wired once by the service.
        self._operator_commands = operator_commands
        # Told of every alert change this bus commits (None: nobody), wired once by the service.
        self._alert_notify = alert_notify
        self.timeout = timeout if timeout is not None else settings.command_timeout
        self._sleep = sleep
        # Aggregates as this process last wrote them, so the next command on a workflow skips
        # reading and replaying its stream (see _decide_and_append).
        # With each, the version of the stream's latest snapshot this process knows of.
        self._aggregates: LRUCache[str, tuple[ResearchWorkflow, int]] = LRUCache(maxsize=AGGREGATE_CACHE_SIZE)
        self._aggregates_lock = threading.Lock()
        self.timeout_ms = max(1, int(self.timeout * 1000))
        limit = f"SET LOCAL statement_timeout = {self.timeout_ms}; "
        self._dedupe_sql, self._claim_sql = text(limit + _DEDUPE_SQL), text(limit + _CLAIM_SQL)
        self._alert_stream_sql = text(_ALERT_STREAM_SQL)
        # The idempotency record, the stream's snapshot if this code took it (same schema version
        # and fingerprint; the empty fingerprint when snapshots are off matches none), and the
        # events from the snapshot's version on (the one at its version checks it: see _load).
        self._load_sql = PreparedStatement(
            """SELECT p.previous, s.version AS snapshot_version, s.event_id AS snapshot_event_id,
                      s.state AS snapshot_state, e.version, e.event_type, e.schema_version, e.payload,
                      e.event_id
               FROM (SELECT (SELECT """
            + _PREVIOUS
            + """ FROM command_log WHERE command_id = :id) AS previous) AS p
               LEFT JOIN aggregate_snapshots AS s
                      ON s.stream_id = :stream_id AND s.schema_version = :snapshot_schema
                         AND s.fingerprint = :snapshot_fingerprint
               LEFT JOIN LATERAL (SELECT version, event_type, schema_version, payload, event_id FROM events
                                  WHERE stream_id = :stream_id AND version >= coalesce(s.version, 1)
                                  ORDER BY version) AS e ON true
               ORDER BY e.version""",
            ("id", "stream_id", "snapshot_schema", "snapshot_fingerprint"),
        )
        # A batch's idempotency records and every stream it touches, in one round trip.
        self._batch_load_sql = text(
            limit
            + "SELECT 'c' AS kind, command_id::text AS key, "
            + _PREVIOUS
            + """ AS payload,
                      NULL::text AS event_type, 0 AS version, NULL::smallint AS schema_version
               FROM command_log WHERE command_id = ANY(CAST(:ids AS uuid[]))
               UNION ALL
               SELECT 'e', stream_id, payload, event_type, version, schema_version
               FROM events WHERE stream_id = ANY(CAST(:streams AS text[]))
               ORDER BY 1, 2, 5"""
        )

    def execute(
        self, command: c.Command, *, trusted_import: bool = False, notify: bool = True
    ) -> CommandResult:
        """Run one command. `trusted_import` (the demo seed, imports, the alert evaluator's steps
        taken while the database was down; never set from a person's input) lets its
        `occurred_at` lie in the past. `notify=False` leaves an alert change unannounced (the
        evaluator announced a step it took while the database was down when it took it)."""
        started = time.perf_counter()
        name = type(command).__name__ if isinstance(command, c.Command) else "invalid"
        try:
            if not isinstance(command, c.Command):
                raise ValidationError("That is not a command; build one with CommandFactory.")
            authorize(command)
            check_business_time(command, trusted_import)
            wait = self.limiter.try_acquire(command.actor)
            if wait > 0:
                raise RateLimitedError(wait, actor=command.actor)
            if isinstance(command, c.WorkflowCommand):
                result = self._execute_workflow_command(command, started)
            elif isinstance(command, c.AlertCommand):
                result = self._execute_alert_command(command, started, notify)
            else:
                result = self._execute_operator_command(command, started)
        except CQRSError as exc:
            self.metrics.record(name, (time.perf_counter() - started) * 1000, exc.category)
            _log_refusal(f"command {name}", exc)
            # A refusal is on the timeline, charged to the actor's rate limit like a command:
            # refusals come before the limit (a role refused first), so a flood of them would
            # otherwise add a row each. What the limit itself refused is not an action.
            if (
                audited(command)
                and not isinstance(exc, RateLimitedError)
                and self.limiter.try_acquire(command.actor) <= 0
            ):
                record_refusal(self.engine, detail=exc.user_message, **audit_fields(command))
            raise
        except Exception as exc:  # a bug: the person sees one sentence, the log the traceback
            self.metrics.record(name, (time.perf_counter() - started) * 1000, "infrastructure")
            log.exception("command %s failed unexpectedly", name)
            error = CQRSError(command=name)
            if audited(command):
                record_refusal(self.engine, detail=error.user_message, **audit_fields(command))
            raise error from exc
        self.metrics.record(name, (time.perf_counter() - started) * 1000)
        return result

    # ------------------------------------------------------------ workflow commands

    def _execute_workflow_command(self, cmd: c.WorkflowCommand, started: float) -> CommandResult:
        print_ = fingerprint(cmd)

        def twin_committed() -> tuple[CommandResult, None] | None:
            previous = self._previous_result(cmd, print_)
            return None if previous is None else (previous, None)

        workflow_id = str(cmd.workflow_id)
        result, snapshot = self._with_retries(
            lambda conn: self._decide_and_append(conn, cmd, print_, started, workflow_id),
            twin_committed,
            driver=True,
            workflow_id=workflow_id,
        )
        if snapshot is not None:
            self._save_snapshot(snapshot)
        return result

    def _save_snapshot(self, snapshot: Snapshot) -> None:
        """Write a snapshot in its own transaction, after the command's has committed: it then only
        ever holds committed events, and whatever goes wrong writing it (a timeout, a lock, a
        dropped connection) cannot undo or fail the command. A lost snapshot is only a missed
        speed-up: the next full load takes it again."""
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"SET LOCAL statement_timeout = {self.timeout_ms}"))
                save_snapshot(conn, snapshot)
        except Exception:
            log.warning(
                "snapshot of %s at version %d not written",
                snapshot.stream_id,
                snapshot.version,
                exc_info=True,
            )

    def _with_retries(
        self,
        work: Callable[[Connection], Any],
        twin_committed: Callable[[], Any],
        *,
        atomic: bool = False,
        driver: bool = False,
        **context: Any,
    ) -> Any:
        """Run `work` in a transaction; retry version conflicts with backoff, and once more after
        a dropped connection. `twin_committed` answers when the command log says a concurrent
        twin of the same command id committed first (None: try again). `atomic`: `work` sends
        several statements that must commit together (the bus's engine is in autocommit mode, so
        it gets a transaction of its own). `driver`: `work` runs its statements with
        `PreparedStatement.rows` only, so on an autocommit engine it may get a `DriverConnection`."""
        attempts = self.settings.command_retries + 1
        reconnected = False
        for attempt in range(attempts):
            try:
                with translate_db_errors():
                    done = self._run(work, atomic, driver)
                if self._appended is not None:  # committed: wake the projections
                    self._appended()
                return done
            except IntegrityError as exc:  # the same command_id committed by a concurrent twin
                if not (
                    isinstance(exc.orig, psycopg2.errors.UniqueViolation) and "command_log" in str(exc.orig)
                ):
                    raise
                previous = twin_committed()
                if previous is not None:
                    # Maybe our own commit whose reply was lost (the retry after a dropped
                    # connection finds it): wake the projections for it too; a spare wake is cheap.
                    if reconnected and self._appended is not None:
                        self._appended()
                    return previous
            except ConcurrencyError:
                if attempt == attempts - 1:
                    raise ConcurrencyError(
                        f"Someone else kept changing this workflow; gave up after {attempts} attempts. Reload and try again.",
                        **context,
                    ) from None
            except InfrastructureError as exc:
                # A pooled connection broken by a database restart: the pool is now invalidated,
                # and running the command again is safe because its command_id makes it idempotent.
                if reconnected or not getattr(exc.__cause__, "connection_invalidated", False):
                    raise
                reconnected = True
                continue
            self._sleep(self._backoff(attempt))
        raise ConcurrencyError(**context)

    def _run(self, work: Callable[[Any], Any], atomic: bool, driver: bool) -> Any:
        if driver and not atomic:
            proxied = self.engine.raw_connection()
            # In autocommit mode every statement commits on its own: no SQLAlchemy Connection,
            # BEGIN or COMMIT needed (otherwise: engine.begin(), below).
            if driver_connection(proxied).autocommit:
                driver_conn = DriverConnection(self.engine, proxied)
                try:
                    return work(driver_conn)
                finally:
                    driver_conn.release()
            proxied.close()
        with self._transaction(atomic) as conn:
            return work(conn)

    @contextlib.contextmanager
    def _transaction(self, atomic: bool) -> Iterator[Connection]:
        if not atomic:
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                yield conn

    def _backoff(self, attempt: int) -> float:
        base = CONFLICT_BACKOFF_BASE_SECONDS * (2**attempt)
        return base + random.uniform(0, base)

    def _previous_result(self, cmd: c.Command, print_: str) -> CommandResult | None:
        with translate_db_errors(), self.engine.begin() as conn:
            previous = conn.execute(self._dedupe_sql, {"id": cmd.command_id}).scalar()
        return repeat_result(cmd, print_, previous) if previous is not None else None

    def _decide_and_append(
        self,
        conn: Connection | DriverConnection,
        cmd: c.WorkflowCommand,
        print_: str,
        started: float,
        workflow_id: str,  # str(cmd.workflow_id)
    ) -> tuple[CommandResult, Snapshot | None]:
        stream_id = stream_id_for(workflow_id)
        # The fast path, one round trip: decide on the aggregate as this process last wrote it
        # (or, for a create, on a new one) and append at that version. Whatever it cannot settle
        # — a stale copy (another writer was first: the version guard refuses), a repeat of an
        # earlier command (refused by its rule, or by the command log's key), a refusal — goes
        # to the full path below, which reads the command log and the stream.
        cached = (
            (ResearchWorkflow(workflow_id), 0)
            if isinstance(cmd, c.CreateResearchWorkflow)
            else self._cached(stream_id)
        )
        if cached is not None:
            try:
                return self._append_decided(conn, cmd, *cached, print_, started)
            except (ConcurrencyError, ValidationError, NotFoundError, AuthorizationError):
                pass
        previous, wf, base = self._load(conn, str(cmd.command_id), workflow_id)
        if previous is not None:
            return repeat_result(cmd, print_, previous), None
        return self._append_decided(conn, cmd, wf, base, print_, started)

    def load_aggregate(self, workflow_id: str) -> ResearchWorkflow:
        """The workflow as a command's full load reads it (its snapshot, if usable, and the events
        after it), not this process's cached copy."""
        with translate_db_errors(), self.engine.begin() as conn:
            return self._load(conn, None, workflow_id)[1]

    def _load(
        self, conn: Connection | DriverConnection, command_id: str | None, workflow_id: str
    ) -> tuple[dict[str, Any] | None, ResearchWorkflow, int]:
        """One round trip (two when a snapshot turns out unusable): the command log's record of
        `command_id` (if any), the workflow folded from its snapshot and the events after it, and
        the version of that snapshot (0: none this code could use, the whole stream replayed)."""
        stream_id = stream_id_for(workflow_id)
        use = bool(self.settings.snapshot_every)
        rows = self._load_sql.rows(
            conn,
            {
                "id": command_id,
                "stream_id": stream_id,
                "snapshot_schema": ResearchWorkflow.SNAPSHOT_SCHEMA_VERSION,
                "snapshot_fingerprint": snapshot_fingerprint() if use else "",
            },
            self.timeout_ms,
        )
        previous = rows[0].previous if rows else None
        if previous is not None:
            return previous, ResearchWorkflow(workflow_id), 0
        wf = self._from_snapshot(workflow_id, rows)
        if wf is not None:
            base = wf.version
            replay(wf, [row for row in rows if row.event_type is not None and row.version > base], stream_id)
            return None, wf, base
        if rows and rows[0].snapshot_version is not None:
            # A snapshot this code cannot use: replay the whole stream (a new one is then taken).
            rows = self._load_sql.rows(
                conn,
                {"id": command_id, "stream_id": stream_id, "snapshot_schema": 0, "snapshot_fingerprint": ""},
                self.timeout_ms,
            )
        wf = ResearchWorkflow(workflow_id)
        replay(wf, [row for row in rows if row.event_type is not None], stream_id)
        return None, wf, 0

    @staticmethod
    def _from_snapshot(workflow_id: str, rows: Sequence[Any]) -> ResearchWorkflow | None:
        """The aggregate of the snapshot the load read, if it can be trusted: its state reads as
        a workflow, and the stream's event at its version is the one it was taken after (not so
        when the log was reset and the stream written again). None otherwise, logged: the caller
        replays the whole stream, so a damaged snapshot never blocks a command."""
        if not rows or rows[0].snapshot_version is None:
            return None
        first = rows[0]
        stream_id = stream_id_for(workflow_id)
        if first.version != first.snapshot_version or first.event_id != first.snapshot_event_id:
            log.warning(
                "snapshot of %s at version %d does not match its stream: ignored",
                stream_id,
                first.snapshot_version,
            )
            return None
        try:
            return ResearchWorkflow.from_snapshot(workflow_id, first.snapshot_version, first.snapshot_state)
        except ValueError as exc:
            log.warning("snapshot of %s at version %d ignored: %s", stream_id, first.snapshot_version, exc)
            return None

    def _append_decided(
        self,
        conn: Connection | DriverConnection,
        cmd: c.WorkflowCommand,
        wf: ResearchWorkflow,
        snapshot_version: int,
        print_: str,
        started: float,
    ) -> tuple[CommandResult, Snapshot | None]:
        _check_access(wf, cmd)
        decided = decide(wf, cmd, self.settings)
        stream_id = stream_id_for(wf.workflow_id)
        stored = self.store.append(
            stream_id,
            wf.version,
            new_events(decided),
            metadata_of(cmd),
            conn=conn,
            record=_record(cmd, wf.workflow_id, _elapsed_ms(started), print_),
            timeout_ms=self.timeout_ms,
        )
        for event in decided:
            wf.apply(event)
        snapshot = None
        every = self.settings.snapshot_every
        if every and wf.version - snapshot_version >= every:
            snapshot = Snapshot(
                stream_id,
                wf.version,
                stored[-1].event_id,
                ResearchWorkflow.SNAPSHOT_SCHEMA_VERSION,
                snapshot_fingerprint(),
                wf.to_snapshot(),
            )
            snapshot_version = wf.version
        self._remember(stream_id, wf, snapshot_version)
        result = CommandResult(
            command_id=cmd.command_id,
            command_type=cmd.command_type,
            aggregate_id=wf.workflow_id,
            events=[EventRef(e.event_type, e.version, e.position) for e in stored],
            position=max(e.position for e in stored),
            correlation_id=cmd.correlation_id,
            duration_ms=_elapsed_ms(started),
        )
        return result, snapshot

    def _cached(self, stream_id: str) -> tuple[ResearchWorkflow, int] | None:
        """Take (remove) this process's copy of a stream's aggregate: while a command works on
        it, no other thread can; it goes back only when the append succeeded."""
        with self._aggregates_lock:
            return self._aggregates.pop(stream_id, None)

    def _remember(self, stream_id: str, wf: ResearchWorkflow, snapshot_version: int) -> None:
        with self._aggregates_lock:
            self._aggregates[stream_id] = (wf, snapshot_version)

    def forget_aggregates(self, stream_ids: Sequence[str] | None = None) -> None:
        """Drop the cached aggregates of these streams (all: None). Never needed for correctness
        (a stale copy is refused by the version guard and read again), only to avoid that retry."""
        with self._aggregates_lock:
            if stream_ids is None:
                self._aggregates.clear()
            for stream_id in stream_ids or ():
                self._aggregates.pop(stream_id, None)

    # ------------------------------------------------------------ batches

    def execute_many(
        self, commands: Sequence[c.Command], *, trusted_import: bool = False
    ) -> list[CommandResult]:
        """Run workflow commands in order as one all-or-nothing unit: one transaction, one
        statement for all their events and one for their command log rows. Commands may build on
        earlier ones of the batch (create a workflow, then start it). A command id executed before
        (or earlier in the batch) gets its first result back with `duplicate=True`, as with
        `execute`. If any command is refused, nothing is written and its error is raised, its
        message saying which command it was. Returns one result per command. `trusted_import` as for
        `execute`. A batch needs one rate-limit token per command, so one actor's commands in it
        may not outnumber the burst."""
        started = time.perf_counter()
        try:
            commands = list(commands)
            if len(commands) > MAX_BATCH_COMMANDS:
                raise ValidationError(
                    f"A batch can hold at most {MAX_BATCH_COMMANDS:,} commands; this one has "
                    f"{len(commands):,}."
                )
            for i, cmd in enumerate(commands):
                if not isinstance(cmd, c.WorkflowCommand):
                    raise ValidationError(
                        f"Command {i + 1} of the batch is not a workflow command; a batch takes "
                        "workflow commands only (run operator commands one at a time)."
                    )
                authorize(cmd)
                try:
                    check_business_time(cmd, trusted_import)
                except ValidationError as exc:
                    _in_batch(exc, i, len(commands), cmd)
                    raise
            per_actor = Counter(cmd.actor for cmd in commands)
            # Waiting never makes such a batch fit: say so instead of "try again in n s" forever
            # (and check every actor before any of them is charged).
            for actor, count in per_actor.items():
                if count > self.limiter.burst:
                    raise BatchExceedsBurstError(count, self.limiter.burst, actor=actor)
            for actor, count in per_actor.items():
                wait = self.limiter.try_acquire(actor, count)
                if wait > 0:
                    raise RateLimitedError(wait, actor=actor)
            results = (
                self._with_retries(
                    # every command was checked to be a WorkflowCommand above
                    lambda conn: self._decide_batch(conn, cast(list[c.WorkflowCommand], commands), started),
                    lambda: None,
                    batch=len(commands),
                )
                if commands
                else []
            )
        except CQRSError as exc:
            self.metrics.record("batch", (time.perf_counter() - started) * 1000, exc.category)
            _log_refusal(f"batch of {len(commands)} commands", exc)
            raise
        except Exception as exc:
            self.metrics.record("batch", (time.perf_counter() - started) * 1000, "infrastructure")
            log.exception("batch of %d commands failed unexpectedly", len(commands))
            raise CQRSError(command="batch") from exc
        share = (time.perf_counter() - started) * 1000 / max(1, len(commands))
        for cmd in commands:
            self.metrics.record(type(cmd).__name__, share)
        return results

    def _decide_batch(
        self, conn: Connection, cmds: list[c.WorkflowCommand], started: float
    ) -> list[CommandResult]:
        streams = list(dict.fromkeys(stream_id_for(str(cmd.workflow_id)) for cmd in cmds))
        rows = conn.execute(
            self._batch_load_sql, {"ids": [str(cmd.command_id) for cmd in cmds], "streams": streams}
        ).all()
        previous = {r.key: r.payload for r in rows if r.kind == "c"}
        states: dict[str, ResearchWorkflow] = {}
        stream_rows: dict[str, list[Any]] = {}
        for r in rows:
            if r.kind == "e":
                stream_rows.setdefault(r.key, []).append(r)
        for stream_id, mine in stream_rows.items():
            replay(states.setdefault(stream_id, ResearchWorkflow(workflow_id_of(stream_id))), mine, stream_id)
        prints = [fingerprint(cmd) for cmd in cmds]
        results: list[CommandResult | int | None] = [None] * len(cmds)  # an int: a repeat of that index
        first_index: dict[uuid.UUID, int] = {}
        appends: list[StreamAppend] = []
        decided_for: list[int] = []
        for i, cmd in enumerate(cmds):
            try:
                if str(cmd.command_id) in previous:
                    results[i] = repeat_result(cmd, prints[i], previous[str(cmd.command_id)])
                    continue
                if cmd.command_id in first_index:
                    if prints[first_index[cmd.command_id]] != prints[i]:
                        raise CommandIdReusedError(
                            cmd.command_id, actor=cmd.actor, command_type=cmd.command_type
                        )
                    results[i] = first_index[cmd.command_id]
                    continue
            except CQRSError as exc:
                _in_batch(exc, i, len(cmds), cmd)
                raise
            first_index[cmd.command_id] = i
            workflow_id = str(cmd.workflow_id)
            stream_id = stream_id_for(workflow_id)
            wf = states.get(stream_id) or states.setdefault(stream_id, ResearchWorkflow(workflow_id))
            expected = wf.version
            try:
                _check_access(wf, cmd)
                decided = decide(wf, cmd, self.settings)
            except CQRSError as exc:
                _in_batch(exc, i, len(cmds), cmd)
                raise
            for event in decided:
                wf.apply(event)
            appends.append(
                StreamAppend(
                    stream_id,
                    expected,
                    new_events(decided),
                    metadata_of(cmd),
                )
            )
            decided_for.append(i)
        duration = _elapsed_ms(started)
        records = [_record(cmds[i], str(cmds[i].workflow_id), duration, prints[i]) for i in decided_for]
        stored = self.store.append_batch(appends, conn=conn, records=records, timeout_ms=self.timeout_ms)
        for i, events in zip(decided_for, stored, strict=True):
            cmd = cmds[i]
            result = CommandResult(
                command_id=cmd.command_id,
                command_type=cmd.command_type,
                aggregate_id=str(cmd.workflow_id),
                events=[EventRef(e.event_type, e.version, e.position) for e in events],
                position=max(e.position for e in events),
                correlation_id=cmd.correlation_id,
                duration_ms=duration,
            )
            results[i] = result
        self.forget_aggregates(streams)  # their cached copies (if any) are behind now
        out: list[CommandResult] = []
        for entry in results:
            first = results[entry] if isinstance(entry, int) else entry
            assert isinstance(first, CommandResult)  # every command has one now; a repeat points at it
            out.append(replace(first, duplicate=True) if isinstance(entry, int) else first)
        return out

    # ------------------------------------------------------------ alert commands

    def _execute_alert_command(self, cmd: c.AlertCommand, started: float, notify: bool) -> CommandResult:
        """Fold the alert's stream, decide, and append with the command log row and (for the
        steps people take) the audit row, in one transaction; then announce the change."""
        print_ = fingerprint(cmd)

        def twin_committed() -> tuple[CommandResult, None] | None:
            previous = self._previous_result(cmd, print_)
            return None if previous is None else (previous, None)

        result, notice = self._with_retries(
            lambda conn: self._decide_alert(conn, cmd, print_, started),
            twin_committed,
            atomic=True,
            alert_id=str(cmd.alert_id),
        )
        if notice is not None and notify and self._alert_notify is not None:
            announce(self._alert_notify, notice)
        return result

    def _decide_alert(
        self, conn: Connection, cmd: c.AlertCommand, print_: str, started: float
    ) -> tuple[CommandResult, AlertNotice | None]:
        previous = conn.execute(self._dedupe_sql, {"id": cmd.command_id}).scalar()
        if previous is not None:
            return repeat_result(cmd, print_, previous), None
        alert_id = str(cmd.alert_id)
        stream_id = alert_stream_id(alert_id)
        alert = Alert.from_stored(alert_id, conn.execute(self._alert_stream_sql, {"s": stream_id}))
        if not alert.exists and not isinstance(cmd, c.RaiseAlert):
            raise NotFoundError(f"There is no alert {alert_id}; reload the Alerts page.", alert_id=alert_id)
        decided = decide_alert(alert, cmd, cmd.occurred_at or datetime.now(UTC))
        stored = self.store.append(
            stream_id,
            alert.version,
            new_events(decided),
            metadata_of(cmd),
            conn=conn,
            record=_record(cmd, alert_id, _elapsed_ms(started), print_),
            timeout_ms=self.timeout_ms,
        )
        for event in decided:
            alert.apply(event)
        if audited(cmd):  # in the same transaction: on the timeline exactly when it took effect
            record_action(conn, outcome="accepted", **audit_fields(cmd))
        result = CommandResult(
            command_id=cmd.command_id,
            command_type=cmd.command_type,
            aggregate_id=alert_id,
            events=[EventRef(e.event_type, e.version, e.position) for e in stored],
            position=max(e.position for e in stored),
            correlation_id=cmd.correlation_id,
            duration_ms=_elapsed_ms(started),
        )
        return result, alert.notice(cmd.actor, stored[-1].occurred_at)

    # ------------------------------------------------------------ operator commands

    def _execute_operator_command(self, cmd: c.Command, started: float) -> CommandResult:
        """Claim the command id, then run the action, in one transaction: the action runs once
        per command id (a repeat, even a concurrent one, gets the first result) and a failed
        action leaves no record (a retry runs it). The stored result's duration is the time to
        the claim; the caller's includes the action."""
        control = self._operator_commands
        if control is None:
            raise CQRSError("Projections are not available in this process.")
        print_ = fingerprint(cmd)
        result = CommandResult(
            command_id=cmd.command_id,
            command_type=cmd.command_type,
            aggregate_id=control.target(cmd),
            events=[],
            position=0,
            correlation_id=cmd.correlation_id,
            duration_ms=_elapsed_ms(started),
        )
        with translate_db_errors(), self.engine.connect() as conn:
            # The bus's engine is in autocommit mode: the claim must stay open until the action is done.
            conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                claimed = conn.execute(
                    self._claim_sql,
                    {
                        "id": cmd.command_id,
                        "type": cmd.command_type,
                        "actor": cmd.actor,
                        "aggregate": result.aggregate_id,
                        "correlation": cmd.correlation_id,
                        "result": json.dumps(result.to_json(fingerprint=print_)),
                    },
                ).scalar()
                if not claimed:
                    previous = conn.execute(self._dedupe_sql, {"id": cmd.command_id}).scalar_one()
                    return repeat_result(cmd, print_, previous)
                control(cmd)
                # In the claim's transaction: on the timeline exactly when the action took effect.
                record_action(conn, outcome="accepted", **audit_fields(cmd))
        return replace(result, duration_ms=_elapsed_ms(started))


# The audit timeline's name of each operator command (`eventlog/audit.py`).
AUDIT_ACTIONS = {
    c.PauseProjection: "projection.pause",
    c.ResumeProjection: "projection.resume",
    c.RebuildProjection: "projection.rebuild",
    c.RetryParkedEvents: "parked.retry",
    c.DiscardParkedEvents: "parked.discard",
    c.RefreshStatistics: "views.refresh",
    c.AcknowledgeAlert: "alert.acknowledge",
    c.SnoozeAlert: "alert.snooze",
    c.RecordAlertAction: "alert.action",  # the evaluator restarted a runner: on the timeline too
}
_ENVELOPE = {"command_id", "correlation_id", "causation_id", "actor", "role", "occurred_at"}


def audited(cmd: object) -> bool:
    """Whether `cmd` goes on the audit timeline: every operator command, and of the alert steps
    those people take (acknowledge, snooze) and the evaluator's actions (an auto-restart); its other
    steps (raise, end a snooze, resolve) are the alert's history only."""
    return isinstance(cmd, c.OperatorCommand) and (
        not isinstance(cmd, c.AlertCommand) or type(cmd) in AUDIT_ACTIONS
    )


def announce(notify: Callable[[AlertNotice], None], notice: AlertNotice) -> None:
    """Tell `notify` of an alert change; its failure is logged and goes no further (a webhook
    that is down must never undo or block a change)."""
    try:
        notify(notice)
    except Exception:
        log.exception("could not announce step %d of alert %s", notice.step, notice.alert_id)


def audit_fields(cmd: c.Command) -> dict[str, Any]:
    """Who asked for an operator command, what it is, and its parameters (`ids: None` reads
    "all parked events")."""
    return {
        "actor": cmd.actor,
        "role": cmd.role,
        "action": AUDIT_ACTIONS.get(type(cmd), cmd.command_type),
        "parameters": cmd.model_dump(mode="json", exclude=_ENVELOPE),
    }


def new_events(decided: Sequence[DomainEvent]) -> list[NewEvent]:
    """The rows the store appends for what the aggregate decided."""
    return [NewEvent(e.event_type, e.to_payload(), e.schema_version) for e in decided]


def metadata_of(cmd: c.Command) -> EventMetadata:
    """Who and why, stamped on every event a command appends; the command causes its own
    events unless it names a cause."""
    return EventMetadata(
        actor=cmd.actor,
        command_id=cmd.command_id,
        correlation_id=cmd.correlation_id,
        causation_id=cmd.causation_id or cmd.command_id,
        occurred_at=cmd.occurred_at,
    )


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _record(cmd: c.Command, aggregate_id: str, duration_ms: float, print_: str) -> CommandRecord:
    """The command log row a workflow command's append writes: its CommandResult's JSON, whose
    events and position the append statement fills in once the events have their positions."""
    command_type = type(cmd).__name__  # cmd.command_type
    pending = _result_json(
        cmd.command_id, command_type, aggregate_id, [], 0, cmd.correlation_id, duration_ms, print_
    )
    return CommandRecord(cmd.command_id, command_type, aggregate_id, pending)
