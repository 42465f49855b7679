"""The schema lab: what the stored log holds, type by schema version, and a dry run that reads every
stored event through today's upcasters and validators before a deploy.

`census` counts stored events by (type, schema version). `dry_run` reads the whole log in one
read-only REPEATABLE READ transaction (nothing can be written, and it sees one consistent log),
stream by stream in version order: each event is upcast and validated as every reader would
(`domain/schema.py`), and each workflow stream is folded into its aggregate as a command would,
so an event its history does not allow, or a gap in the versions, is found too. The report says
which versions were seen, how many events each upcaster touched and every event that fails, with
its position. `cqrs-console schema check` prints it and exits 1 when anything fails.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from cqrs_core.domain.events import (
    REGISTRY,  # the registry with every event class and upcaster
    STREAM_PREFIX,
    event_from_payload,
    workflow_id_of,
)
from cqrs_core.domain.workflow import ResearchWorkflow
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import CorruptStreamError

MAX_FAILURES = 10_000  # listed one by one; beyond that they are only counted
FETCH_ROWS = 5_000


@dataclass(frozen=True)
class CensusRow:
    event_type: str
    schema_version: int
    count: int
    current_version: int | None  # the version this code writes (None: a type it does not know)
    reading: str  # how this code reads them (`reading`)


@dataclass(frozen=True)
class Failure:
    position: int
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    message: str

    def describe(self) -> str:
        return (
            f"position {self.position}: {_clip(self.event_type)} v{self.schema_version} "
            f"(version {self.version} of {_clip(self.stream_id)}): {self.message}"
        )


@dataclass
class SchemaReport:
    events: int = 0
    streams: int = 0
    versions: Counter[tuple[str, int]] = field(default_factory=Counter)  # (stored type, version) -> events
    upcasters: Counter[str] = field(default_factory=Counter)  # step name -> events it touched
    failures: list[Failure] = field(default_factory=list)
    failed: int = 0  # every failing event, also those beyond MAX_FAILURES
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def lines(self) -> list[str]:
        out = [f"{self.events:,} events in {self.streams:,} streams read in {self.seconds:.1f} s"]
        out.append("versions seen:")
        for (event_type, version), n in sorted(self.versions.items()):
            out.append(f"  {_clip(event_type)} v{version}: {n:,} ({reading(event_type, version)})")
        out.append("upcasters:")
        names = {step.name for step in REGISTRY.steps.values()}
        for name in sorted(names | set(self.upcasters)):
            out.append(f"  {name}: {self.upcasters.get(name, 0):,} events")
        if self.failed:
            out.append(f"failures: {self.failed:,}")
            out.extend(f"  {f.describe()}" for f in self.failures)
            if self.failed > len(self.failures):
                out.append(f"  … and {self.failed - len(self.failures):,} more")
        out.append(
            "schema check: OK — every stored event reads with this code"
            if self.ok
            else f"schema check: FAILED — {self.failed:,} stored events would not read with this code"
        )
        return out


reading = REGISTRY.reading


def _clip(value: Any, limit: int = 80) -> str:
    """Stored text (a type or stream name could be anything) as one short printable line."""
    s = "".join(ch if ch.isprintable() else "\ufffd" for ch in str(value))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def census(engine: Engine) -> list[CensusRow]:
    """Stored events by type and schema version, most first."""
    with translate_db_errors(), engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT event_type, schema_version, count(*) AS n FROM events "
                "GROUP BY event_type, schema_version ORDER BY n DESC, event_type, schema_version"
            )
        ).all()
    return [
        CensusRow(
            r.event_type,
            int(r.schema_version),
            int(r.n),
            REGISTRY.current_version(r.event_type),
            reading(r.event_type, int(r.schema_version)),
        )
        for r in rows
    ]


def dry_run(engine: Engine) -> SchemaReport:
    """Read every stored event through the current upcasters, validators and the aggregate's
    fold, in a read-only transaction; nothing is written."""
    started = time.monotonic()
    report = SchemaReport()
    with translate_db_errors(), engine.connect() as conn:
        # Read only and one snapshot: nothing can be written, and the whole log is one consistent state.
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(
                text(
                    "SELECT position, stream_id, version, event_type, schema_version, payload "
                    "FROM events ORDER BY stream_id, version"
                )
            )
            stream: str | None = None
            aggregate: ResearchWorkflow | None = None
            for row in result:
                if row.stream_id != stream:
                    stream = row.stream_id
                    report.streams += 1
                    aggregate = (
                        ResearchWorkflow(workflow_id_of(stream)) if stream.startswith(STREAM_PREFIX) else None
                    )
                _check(report, row, aggregate)
                if aggregate is not None and aggregate.version != row.version:
                    aggregate = None  # its history broke at this event: the rest is not folded
    report.failures.sort(key=lambda f: f.position)
    report.seconds = time.monotonic() - started
    return report


def _check(report: SchemaReport, row: Any, aggregate: ResearchWorkflow | None) -> None:
    report.events += 1
    report.versions[(row.event_type, row.schema_version)] += 1
    try:
        if aggregate is not None and row.version != aggregate.version + 1:
            raise CorruptStreamError(
                f"the stream jumps from version {aggregate.version} to version {row.version} (an event is missing)"
            )
        steps = REGISTRY.chain(
            row.event_type, row.schema_version, stream_id=row.stream_id, version=row.version
        )
        event = event_from_payload(
            row.event_type,
            row.payload,
            stream_id=row.stream_id,
            version=row.version,
            schema_version=row.schema_version,
        )
        for step in steps:
            report.upcasters[step.name] += 1
        if aggregate is not None:
            aggregate.apply_stored(event, stream_id=row.stream_id, stored_type=row.event_type)
    except CorruptStreamError as exc:
        report.failed += 1
        if len(report.failures) < MAX_FAILURES:
            problem = exc.context.get("problem") or exc.user_message
            report.failures.append(
                Failure(
                    row.position,
                    row.stream_id,
                    row.version,
                    row.event_type,
                    row.schema_version,
                    _clip(problem, 300),
                )
            )
