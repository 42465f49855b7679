"""Continuous verification: every pass replays a sample of streams with the projections' own code
and compares the result with the live rows of those streams (issue 17 part 4). `verify` proves the
whole read model at once when someone runs it; this runs by itself (a scheduler job) and covers the
whole read model over a round of passes, at a bounded cost per pass.

A pass, in four steps on one connection of its own:

1. **What to replay**, in one read-only REPEATABLE READ snapshot: the next streams after the rolling
   cursor (`verification_progress`), the streams of open findings (rechecked every pass, so a
   finding resolves as soon as its stream is right again), every projection's checkpoint C1, its
   parked events of those streams, and the streams' events up to the checkpoints.
2. **Replay** each projection's events up to its C1 into session-local temporary tables through
   `batches.step`, exactly as a rebuild or `verify` replays (events the live projection went past
   unapplied are skipped here too).
3. **Compare**, in a second read-only REPEATABLE READ snapshot: each projection's checkpoint C2 and
   its live rows belong together there (a batch writes both in one transaction, so a batch
   committing meanwhile is either wholly in the snapshot or not at all). A stream is compared only
   if it is exactly as replayed: its last event in this snapshot is the last one replayed, that
   event is at or before C2, and its parked events are as they were in step 1. Then the live
   projection has applied precisely the replayed events and nothing else, and any difference is
   drift. A stream written to since (its latest event is past the replay, so past C1, and perhaps
   past the checkpoint) is skipped this pass, not reported: it is compared in a later round.
4. **Record**, in one short transaction: open, update or resolve findings; move the cursor.

The snapshots are read-only, so they take no transaction id and never hold back the gap-free
horizon the projections read below; only the replay's short transactions (temporary tables) do.

Cost bound: a row cap. A pass replays at most `CQRS_VERIFY_MAX_EVENTS` events (the streams' lengths
are known from the index before anything is read), so its reads, its fold and its scratch rows are
bounded whatever the sample size says; a stream longer than the cap on its own is passed over and
counted skipped. Every statement also runs under `STATEMENT_TIMEOUT_MS`, a backstop against a plan
gone wrong, not the bound itself.

Scratch rows live in temporary tables, not in memory: the projections write through SQL (set-based
upserts, COPY, reads of the rows they fold into), so a temporary table runs their exact code with
no second fold to keep in step. Temporary tables are private to the session (nobody else can see,
plant or write into them), need no CREATE right on any schema, and go with the connection.

Which projections: those whose every table has a `workflow_id` column (the stream's rows are the
rows of its workflow). Rows of a workflow that has no stream at all are found too: each pass also
looks, within the stretch of workflow ids its streams cover, for live rows of workflows with no
events (EXTRA_ROW)."""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

from cqrs_core.domain.events import STREAM_PREFIX, workflow_id_of
from cqrs_core.eventlog.cursors import LogCursor, read_checkpoints
from cqrs_core.eventlog.reader import LogEvent, LoggedEvent, read_streams
from cqrs_core.eventlog.streams import StreamLength, latest_cursors, next_streams, stream_lengths
from cqrs_core.infra.config import Settings
from cqrs_core.projections.base import Projection
from cqrs_core.projections.engine import drift_findings, verification_progress
from cqrs_core.projections.engine.batches import RetryPolicy, step
from cqrs_core.projections.engine.drift_findings import DriftFinding
from cqrs_core.projections.engine.failures import describe_error
from cqrs_core.projections.engine.locks import JOB_NAMESPACE, exclusive
from cqrs_core.projections.engine.parking import parked_of_streams
from cqrs_core.projections.engine.verification_progress import VerificationProgress
from cqrs_core.projections.engine.verify import (
    REPLAY_BATCH,
    Difference,
    ScratchTarget,
    diff_sql,
    difference_of,
    paired_differences_sql,
)
from cqrs_core.projections.registry import PROJECTIONS

log = logging.getLogger(__name__)

# The advisory lock (JOB_NAMESPACE) that keeps passes of several processes from running at once.
PASS_LOCK = "continuous-verification"
# Every statement of a pass is cancelled by the server after this long (a backstop; the row cap
# keeps a pass far below it).
STATEMENT_TIMEOUT_MS = 30_000
# Streams with an open finding rechecked per pass at most, and the share of the event cap they may
# take: the rolling sample always keeps at least the rest.
RECHECK_STREAMS = 50
RECHECK_EVENT_SHARE = 0.5
# Scratch tables are `pg_temp.<table>__sample`: apart from verify's (`__verify`).
SCRATCH_SUFFIX = "__sample"
# Rows of workflows without a stream reported per projection and pass at most.
ORPHANS_PER_PASS = 100
# Parked-event statuses of events the live projection went past without applying.
SKIPPED_STATUSES = ("parked", "discarded")


def sampled_projections() -> list[Projection]:
    """The projections a pass verifies: those whose rows all carry their workflow's id."""
    return [p for p in PROJECTIONS.values() if all("workflow_id" in spec.column_names for spec in p.tables)]


@dataclass(frozen=True)
class SampleSize:
    """How much one pass verifies."""

    streams: int  # at least this many streams ...
    percent: float  # ... or this percentage of the read model's workflows, whichever is more
    max_events: int  # but never more than this many events (the cost bound)

    @classmethod
    def from_settings(cls, settings: Settings) -> SampleSize:
        return cls(settings.verify_sample_streams, settings.verify_sample_percent, settings.verify_max_events)

    def streams_for(self, total: int) -> int:
        """Streams to sample from a round counted against `total` workflows (at least one)."""
        return max(1, self.streams, math.ceil(total * self.percent / 100))


@dataclass
class PassReport:
    """What one pass did."""

    walked: list[str]  # the streams of the rolling sample the cursor moved past, in order
    checked: int  # of which compared by every projection
    skipped: int  # of which passed over by some projection (written to since, or too long)
    rechecked: int  # streams of open findings checked again
    events: int  # events replayed (each replayed once for all the projections)
    round_done: bool  # the walk reached the last stream: the round is complete
    seconds: float
    drifted: dict[str, list[str]] = field(default_factory=dict)  # projection -> streams found drifted
    # projection -> streams of this pass it did not compare (applied past the replay, or not yet)
    passed_over: dict[str, list[str]] = field(default_factory=dict)
    resolved: int = 0  # findings resolved
    problems: list[str] = field(default_factory=list)  # events the replay could not apply

    def line(self) -> str:
        drift = sum(len(s) for s in self.drifted.values())
        return (
            f"verification pass: {self.checked} streams checked, {self.skipped} skipped, "
            f"{self.rechecked} rechecked, {self.events} events, {drift} drifted, {self.resolved} resolved, "
            f"{self.seconds * 1000:.0f} ms"
        )


@dataclass(frozen=True)
class VerificationStatus:
    """Where continuous verification is, and what it found (for the Projections page)."""

    progress: VerificationProgress
    findings: list[DriftFinding]
    open_findings: int


def verification_status(engine: Engine, limit: int = 100) -> VerificationStatus:
    """The round's progress, the last pass, and the newest `limit` open findings."""
    with engine.connect() as conn:
        progress = verification_progress.read_progress(conn)
        count = int(
            conn.execute(
                text("SELECT count(*) FROM verification_findings WHERE resolved_at IS NULL")
            ).scalar_one()
        )
    return VerificationStatus(progress, drift_findings.open_drift_findings(engine, limit), count)


def run_pass(
    engine: Engine,
    size: SampleSize,
    *,
    min_interval: float | None = None,
    after_replay: Callable[[], object] | None = None,
) -> PassReport | None:
    """One verification pass (see the module docstring). None when another process is running
    one, or (with `min_interval`) when any process finished one less than `min_interval` seconds
    ago. `after_replay` is called between the replay and the comparison (tests commit a
    projection batch exactly there)."""
    with exclusive(engine, JOB_NAMESPACE, PASS_LOCK) as mine:
        if not mine:
            return None
        if min_interval and _passed_recently(engine, min_interval):
            return None
        try:
            report = _pass(engine, size, after_replay)
        except Exception as exc:
            verification_progress.record_failure(engine, describe_error(exc))
            raise
    log.info("%s", report.line())
    for problem in report.problems:
        log.warning("verification pass: %s", problem)
    return report


def _passed_recently(engine: Engine, seconds: float) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT last_pass_at > clock_timestamp() - make_interval(secs => :s)"
                    " FROM verification_progress"
                ),
                {"s": seconds},
            ).scalar()
        )


@dataclass
class _Sample:
    progress: VerificationProgress
    walked: list[StreamLength]  # the rolling sample, in walk order (long ones included)
    too_long: set[str]  # streams of the walk longer than the event cap: passed over
    rechecks: list[str]  # streams of open findings
    round_done: bool
    total: int  # what the round counts against

    @property
    def streams(self) -> list[str]:
        """Every stream to replay."""
        walked = [s.stream_id for s in self.walked if s.stream_id not in self.too_long]
        return list(dict.fromkeys([*self.rechecks, *walked]))

    @property
    def after_stream(self) -> str:
        """Where the cursor goes: past the last stream walked."""
        return self.walked[-1].stream_id if self.walked else self.progress.after_stream


def _pass(engine: Engine, size: SampleSize, after_replay: Callable[[], object] | None) -> PassReport:
    started = time.monotonic()
    projections = sampled_projections()
    names = [p.name for p in projections]
    problems: list[str] = []
    with engine.connect() as conn:
        try:
            # 1. What to replay, and up to where: one snapshot.
            with _snapshot(conn):
                sample = _choose(conn, size)
                streams = sample.streams
                before = read_checkpoints(conn, names)
                parked_before = {n: parked_of_streams(conn, n, streams) for n in names}
                upto = max(before.values(), default=LogCursor())
                events = read_streams(conn, streams, upto)
            # 2. Replay each projection's events up to its checkpoint into scratch tables.
            replayed: dict[str, dict[str, LogCursor]] = {}
            scratch: dict[str, Mapping[str, str]] = {}
            for projection in projections:
                bound = before.get(projection.name, LogCursor())
                skip = {
                    position
                    for pairs in parked_before[projection.name].values()
                    for position, status in pairs
                    if status in SKIPPED_STATUSES
                }
                target = _SampleTarget(conn, projection, problems, events, bound, skip)
                _create_scratch(conn, projection, target.tables)
                while step(projection, target, REPLAY_BATCH, RetryPolicy(attempts=0)).full:
                    pass
                replayed[projection.name] = target.last_of_stream
                scratch[projection.name] = target.tables
            if after_replay is not None:
                after_replay()
            # 3. Compare where the live projection applied exactly what was replayed: one snapshot.
            with _snapshot(conn):
                after = read_checkpoints(conn, names)
                latest = latest_cursors(conn, streams)
                verdicts = {}
                for projection in projections:
                    n = projection.name
                    parked_now = parked_of_streams(conn, n, streams)
                    last = replayed[n]
                    checkpoint = after.get(n, LogCursor())
                    comparable = [
                        s
                        for s in streams
                        if latest.get(s) == last.get(s)
                        and (last.get(s) is None or last[s] <= checkpoint)
                        and parked_now.get(s) == parked_before[n].get(s)
                    ]
                    verdicts[n] = _compare(conn, projection, scratch[n], comparable, _orphan_range(sample))
                    compared = set(comparable)
                    verdicts[n].passed_over = [s for s in streams if s not in compared]
            # 4. Record the findings and move the cursor: one short transaction.
            report = _record(conn, sample, verdicts, len(events), started, problems)
        finally:
            _drop_scratch(conn, projections)
    return report


def _choose(conn: Connection, size: SampleSize) -> _Sample:
    """The streams of this pass, within the event cap: open findings' first (at most
    RECHECK_EVENT_SHARE of the cap), then the rolling sample as far as the rest of the cap goes."""
    progress = verification_progress.read_progress(conn)
    new_round = progress.round_started_at is None
    total = verification_progress.read_models_total(conn) if new_round else progress.round_total
    budget = size.max_events
    rechecks = []
    recheck_budget = int(budget * RECHECK_EVENT_SHARE)
    lengths = stream_lengths(conn, drift_findings.open_streams(conn, RECHECK_STREAMS))
    for stream_id, events in lengths.items():
        if events <= recheck_budget:
            rechecks.append(stream_id)
            recheck_budget -= events
            budget -= events
    wanted = size.streams_for(total)
    walk = next_streams(conn, progress.after_stream, wanted, STREAM_PREFIX)
    walked, too_long, cut = _within(walk, budget, size.max_events)
    if cut and not walked and rechecks:
        # The next stream does not fit beside the rechecks: it goes first, they wait a pass, so
        # the round never stalls behind open findings.
        rechecks = []
        walked, too_long, cut = _within(walk, size.max_events, size.max_events)
    round_done = not cut and len(walk) < wanted
    return _Sample(progress, walked, too_long, rechecks, round_done, total)


def _within(
    walk: Sequence[StreamLength], budget: int, max_events: int
) -> tuple[list[StreamLength], set[str], bool]:
    """The streams of `walk` that fit in `budget` events, in order (those longer than
    `max_events` on their own are walked past, not replayed: `too_long`), and whether the walk
    was cut short."""
    walked: list[StreamLength] = []
    too_long: set[str] = set()
    for stream in walk:
        if stream.events > max_events:
            too_long.add(stream.stream_id)
        elif stream.events > budget:
            return walked, too_long, True  # this one and the rest wait for the next pass
        else:
            budget -= stream.events
        walked.append(stream)
    return walked, too_long, False


def _orphan_range(sample: _Sample) -> tuple[str | None, str | None] | None:
    """The workflow ids (lo, hi] the rolling sample covers, None at an open end; None when it
    covers none (a pass cut before its first stream). Rows of workflows without a stream are
    looked for there: over a round the ranges tile every workflow id (stream ids of canonical
    uuids sort like the uuids)."""
    hi = None if sample.round_done else _workflow_uuid(sample.after_stream)
    if hi is None and not sample.round_done:
        return None  # nothing walked, or the last stream names no workflow id: no end to stop at
    return _workflow_uuid(sample.progress.after_stream), hi


def _workflow_uuid(stream_id: str) -> str | None:
    if not stream_id.startswith(STREAM_PREFIX):
        return None
    try:
        return str(uuid.UUID(workflow_id_of(stream_id)))
    except ValueError:
        return None


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction: one snapshot, and no transaction id."""
    conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    try:
        with conn.begin():
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            yield
    finally:
        conn.execution_options(isolation_level="READ COMMITTED", postgresql_readonly=False)


class _SampleTarget(ScratchTarget):
    """verify's scratch target fed from the events read in step 1 (the sample's streams only) up
    to the live checkpoint, skipping what the live projection skipped then."""

    def __init__(
        self,
        conn: Connection,
        projection: Projection,
        problems: list[str],
        events: Sequence[LogEvent],
        bound: LogCursor,
        skip: Collection[int],
    ) -> None:
        super().__init__(conn, projection, problems, suffix=SCRATCH_SUFFIX)
        self.bound = bound
        self.events = [e for e in events if e.cursor <= bound]
        self._cursors = [e.cursor for e in self.events]
        self._skip = set(skip)
        self.last_of_stream = {e.stream_id: e.cursor for e in self.events}  # in log order: the last wins

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with super().transaction() as conn:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            yield conn

    def read(
        self, conn: Connection, cursor: LogCursor, limit: int, handled: Collection[str] | None
    ) -> Sequence[LoggedEvent]:
        first = bisect.bisect_right(self._cursors, cursor)
        return self.events[first : first + limit]

    def skip_positions(self, conn: Connection, events: Sequence[LoggedEvent]) -> set[int]:
        return {e.position for e in events if e.position in self._skip}


def _create_scratch(conn: Connection, projection: Projection, tables: Mapping[str, str]) -> None:
    """Fresh scratch tables: the live table's columns and defaults, its key and the projection's
    lookup indexes (as a rebuild's shadow), nothing the queries need."""
    with conn.begin():
        for spec in projection.tables:
            scratch = tables[spec.name]
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {scratch}")
            conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {scratch} (LIKE {spec.name} INCLUDING DEFAULTS)")
            conn.exec_driver_sql(f"ALTER TABLE {scratch} ADD PRIMARY KEY ({', '.join(spec.key)})")
            for index in projection.lookup_indexes.get(spec.name, ()):
                conn.exec_driver_sql(index.format(table=scratch))


def _drop_scratch(conn: Connection, projections: Sequence[Projection]) -> None:
    with contextlib.suppress(Exception):
        if conn.in_transaction():
            conn.rollback()
        with conn.begin():
            for projection in projections:
                for spec in projection.tables:
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{spec.name}{SCRATCH_SUFFIX}")


@dataclass
class _Verdict:
    """One projection's comparison: which streams were compared, and the differences of each."""

    compared: list[str]
    differences: dict[str, list[Difference]]  # stream id -> its differing rows
    passed_over: list[str] = field(default_factory=list)  # streams of the pass not compared


def _compare(
    conn: Connection,
    projection: Projection,
    scratch: Mapping[str, str],
    streams: Sequence[str],
    orphan_range: tuple[str | None, str | None] | None,
) -> _Verdict:
    """The differing rows of `streams` (and of workflows without a stream in `orphan_range`)
    between the live tables and the scratch ones, grouped by stream."""
    stream_of = {wid: s for s in streams if (wid := _workflow_uuid(s)) is not None}
    for spec in projection.tables:
        if orphan_range is not None:
            for wid in _orphans(conn, spec.name, orphan_range):
                stream_of.setdefault(wid, f"{STREAM_PREFIX}{wid}")
    differences: dict[str, list[Difference]] = {}
    where = "WHERE workflow_id = ANY(CAST(:ids AS uuid[]))"
    for spec in projection.tables:
        sql = diff_sql(spec, spec.name, scratch[spec.name], where) + paired_differences_sql(spec)
        for row in conn.execute(text(sql), {"ids": list(stream_of)}):
            d = difference_of(spec, row.live_row, row.replay_row)
            either = d.live if d.live is not None else d.replay
            assert either is not None
            differences.setdefault(stream_of[str(either["workflow_id"])], []).append(d)
    compared = list(dict.fromkeys([*streams, *stream_of.values()]))
    return _Verdict(compared, differences)


def _orphans(conn: Connection, table: str, id_range: tuple[str | None, str | None]) -> list[str]:
    """Workflow ids in `id_range` with rows in `table` and no stream in the log (this snapshot):
    the distinct ids first, so the log is probed once per workflow, not once per row."""
    lo, hi = id_range
    bounds = ["true"]
    if lo is not None:
        bounds.append("workflow_id > CAST(:lo AS uuid)")
    if hi is not None:
        bounds.append("workflow_id <= CAST(:hi AS uuid)")
    return list(
        conn.execute(
            text(
                f"""
                SELECT d.workflow_id::text FROM (SELECT DISTINCT workflow_id FROM {table} WHERE {" AND ".join(bounds)}) d
                WHERE NOT EXISTS (
                    SELECT 1 FROM events e WHERE e.stream_id = CAST(:prefix AS text) || d.workflow_id::text)
                LIMIT :n
                """
            ),
            {"lo": lo, "hi": hi, "prefix": STREAM_PREFIX, "n": ORPHANS_PER_PASS},
        ).scalars()
    )


def _record(
    conn: Connection,
    sample: _Sample,
    verdicts: dict[str, _Verdict],
    events: int,
    started: float,
    problems: list[str],
) -> PassReport:
    walked = [s.stream_id for s in sample.walked]
    compared_by_all = set(walked).difference(sample.too_long)
    for verdict in verdicts.values():
        compared_by_all &= set(verdict.compared)
    report = PassReport(
        walked=walked,
        checked=len(compared_by_all),
        skipped=len(walked) - len(compared_by_all),
        rechecked=len(sample.rechecks),
        events=events,
        round_done=sample.round_done,
        seconds=0.0,
        problems=problems,
    )
    with conn.begin():
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        for name, verdict in verdicts.items():
            drifted = {s: drift_findings.finding_of(d) for s, d in verdict.differences.items()}
            right = [s for s in verdict.compared if s not in drifted]
            _, resolved = drift_findings.record(conn, name, drifted, right)
            report.resolved += resolved
            if drifted:
                report.drifted[name] = sorted(drifted)
            if verdict.passed_over:
                report.passed_over[name] = verdict.passed_over
        report.seconds = time.monotonic() - started
        next_total = verification_progress.read_models_total(conn) if sample.round_done else sample.total
        verification_progress.record_pass(
            conn,
            started_after=sample.progress.after_stream,
            after_stream=sample.after_stream,
            round_done=sample.round_done,
            checked=report.checked,
            skipped=report.skipped,
            events=events,
            ms=report.seconds * 1000,
            next_total=next_total,
        )
    return report
