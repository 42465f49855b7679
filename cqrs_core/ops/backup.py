"""Backing up and restoring the console's database with PostgreSQL's own tools.

A backup is `pg_dump -Fc` of the database, taken in one snapshot that is also read for the
report (events and head), so the read models' checkpoints in it match its event log exactly:
a restored database needs no rebuild. A restore goes into an empty database (or replaces one
after explicit confirmation, having backed it up first), then migrates it up to this code.

Transaction ids matter here. Every event records the id of the transaction that wrote it
(`events.txid`), and the projections read the log in (txid, position) order below the oldest
running transaction (eventlog/store.py). A dump carries those ids to a server whose own counter
may be behind them (a new cluster starts near zero): new events would then sort *before* the
restored ones, behind every checkpoint, and never be applied. So before restoring, the dump's
highest txid is read and compared with the target server's next one. The embedded server is
moved past it (its transaction-id epoch raised with `pg_resetwal -e` while it is stopped, which
changes nothing else: PostgreSQL keeps the epoch only for such 64-bit ids); a configured server
that is behind is refused before anything changes.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cqrs_core.infra import pg_tools
from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import (
    embedded_pgdata,
    migrate,
    redact,
    resolve_database_url,
    start_embedded_server,
    stop_embedded_server,
)
from cqrs_core.infra.errors import InfrastructureError, ValidationError

# Tables whose rows are worth a confirmation before a restore replaces them.
_VALUABLE = ("events", "operator_actions")


@dataclass(frozen=True)
class BackupReport:
    path: Path
    bytes: int
    events: int
    head: int
    source: str  # the URL, password hidden


@dataclass(frozen=True)
class RestoreReport:
    path: Path
    events: int
    head: int
    target: str  # the URL, password hidden
    replaced_backup: Path | None  # the backup taken of what the restore replaced
    epoch_raised: bool


def default_backup_path(settings: Settings, database: str, label: str = "") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.data_dir.expanduser().resolve() / "backups" / f"{database}{label}-{stamp}.dump"


def server_major(conn: Connection) -> int:
    return int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000


def _engine(url: str, **kwargs):
    return create_engine(url, poolclass=NullPool, **kwargs)


# ---------------------------------------------------------------- backup


def backup(url: str, to: Path, *, bin_dir: Path | None = None) -> BackupReport:
    """Write a `pg_dump -Fc` of `url`'s database to `to` (created 0600; a partial file never
    takes its name). `bin_dir`: run that directory's pg_dump (the upgrade uses the new server's
    programs against the old server)."""
    to = Path(to).expanduser().resolve()
    if to.is_dir():
        raise ValidationError(f"{to} is a directory; give the backup file's name.")
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(f"The backup cannot be written to {to.parent} ({exc.strerror}).") from exc
    engine = _engine(url, isolation_level="REPEATABLE READ")
    partial = to.with_name(f".{to.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with engine.connect() as conn:
            # One snapshot for pg_dump and for the figures: the transaction exporting it stays
            # open until pg_dump has started with it (pg_dump keeps it from then on).
            conn.execute(text("SET TRANSACTION READ ONLY"))
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            events, head = conn.execute(text("SELECT count(*), coalesce(max(position), 0) FROM events")).one()
            major = server_major(conn)
            pg_dump = bin_dir / "pg_dump" if bin_dir else pg_tools.client_program("pg_dump", major)
            target = pg_tools.connection(url)
            # Readable by its owner only, from the start: a dump holds everything, sign-in sessions
            # included (pg_dump truncates the file and keeps its mode).
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            pg_tools.run(
                [pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--file={partial}", *target.args()],
                env=target.env,
                what="pg_dump",
            )
            conn.rollback()
        partial.replace(to)
    except Exception:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    finally:
        engine.dispose()
    return BackupReport(to, to.stat().st_size, int(events), int(head), redact(url))


# ---------------------------------------------------------------- restore


def restore(
    settings: Settings,
    path: Path,
    *,
    confirmed: bool,
    say: Callable[[str], None] = lambda _line: None,
) -> RestoreReport:
    """Restore a backup into the database the settings name (CQRS_DATABASE_URL, or the embedded
    server's), then migrate it. Refuses, changing nothing, a file that is no backup, a database
    that holds events unless `confirmed` (it is then backed up first, dropped and created again),
    and a configured server whose transaction ids are behind the backup's."""
    path = Path(path).expanduser().resolve()
    pg_restore = pg_tools.client_program("pg_restore", pg_tools.wheel_major())
    _check_is_backup(pg_restore, path)
    max_txid = _max_event_txid(pg_restore, path)
    url = settings.direct_database_url or resolve_database_url(settings)  # never through a pooler
    database = make_url(url).database or settings.database_name
    embedded = not settings.database_url

    held, has_tables = _contents(url)
    if held and not confirmed:
        raise ValidationError(
            f"The database {database} holds {held:,} events or audit rows; restoring replaces it: run "
            "again with --yes (it is backed up first)."
        )
    if not _next_txid_is_past(url, max_txid) and not embedded:
        raise ValidationError(
            f"This server's transaction ids are behind the backup's ({max_txid:,}), so new events would "
            "sort before restored ones; restore into a server that has run longer, or raise its epoch "
            "(stop it, pg_resetwal -e N, start it)."
        )
    pg_restore = pg_tools.client_program("pg_restore", _major(url))
    replaced = None
    if held:
        replaced = default_backup_path(settings, database, "-before-restore")
        say(f"backing up {database} before replacing it: {replaced}")
        backup(url, replaced)
    epoch_raised = False
    if not _next_txid_is_past(url, max_txid):  # embedded only, see the check above
        say("moving the embedded server's transaction ids past the backup's")
        _raise_epoch(settings, max_txid)
        url = start_embedded_server(settings.data_dir, settings.database_name)
        epoch_raised = True
    if has_tables:
        _recreate_database(url)
    _ensure_roles(pg_restore, path, url, say)
    say(f"restoring {path.name} into {database}")
    _load(pg_restore, path, url)
    migrate(url)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            events, head = conn.execute(text("SELECT count(*), coalesce(max(position), 0) FROM events")).one()
    finally:
        engine.dispose()
    return RestoreReport(path, int(events), int(head), redact(url), replaced, epoch_raised)


# Column options PostgreSQL defines (ALTER TABLE … ALTER COLUMN … SET (…)). Debian's PostgreSQL
# 15.20 also writes a `pg_attver` option on every column, which other builds refuse: a backup of
# such a server would not restore anywhere else.
COLUMN_OPTIONS = ("n_distinct", "n_distinct_inherited")
_COLUMN_OPTIONS_SET = re.compile(r"^(ALTER TABLE ONLY .+ ALTER COLUMN .+ SET )\((.*)\);$")


def portable_schema_line(line: str) -> str | None:
    """A line of the schema script with the column options PostgreSQL does not define taken out
    (None: nothing is left of the statement)."""
    found = _COLUMN_OPTIONS_SET.match(line.rstrip("\n"))
    if found is None:
        return line
    kept = [o for o in found.group(2).split(",") if o.split("=", 1)[0].strip() in COLUMN_OPTIONS]
    if not kept:
        return None
    return f"{found.group(1)}({','.join(kept)});\n"


# Settings pg_restore's script sets in its header that older servers do not know.
_SETTING_SINCE = {"transaction_timeout": 17}
_HEADER_SET = re.compile(r"^SET (\w+) = .*;$")


def _for_server(major: int) -> Callable[[str], bool]:
    """Whether a header line of the script is for a server of `major` (not a SET it lacks)."""

    def keep(line: str) -> bool:
        found = _HEADER_SET.match(line.rstrip("\n"))
        return found is None or _SETTING_SINCE.get(found.group(1), 0) <= major

    return keep


def _load(pg_restore: Path, path: Path, url: str) -> None:
    """Restore `path` into `url`'s database as one transaction that stops at the first error:
    pg_restore writes the schema (made portable, see COLUMN_OPTIONS), then the data and the
    indexes, constraints and triggers, as SQL for psql."""
    target = pg_tools.connection(url)
    psql = subprocess.Popen(
        [
            str(pg_tools.wheel_bin_dir() / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--single-transaction",
            "--set=ON_ERROR_STOP=1",
            *target.args(),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=target.env,
        text=True,
    )
    assert psql.stdin is not None and psql.stderr is not None
    header_line = _for_server(_major(url))
    failed = None
    try:
        for sections, portable in (
            (["--section=pre-data"], True),
            (["--section=data", "--section=post-data"], False),
        ):
            script = subprocess.Popen(
                [str(pg_restore), "--no-owner", *sections, "--file=-", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert script.stdout is not None and script.stderr is not None
            header = True
            for line in script.stdout:
                header = header and (
                    line.startswith(("SET ", "SELECT pg_catalog.", "--", "\\")) or not line.strip()
                )
                if header and not header_line(line):
                    continue
                kept = portable_schema_line(line) if portable else line
                if kept is not None:
                    psql.stdin.write(kept)
            if script.wait() != 0:
                failed = f"pg_restore failed: {pg_tools.last_error(script.stderr.read())}."
                break
    except BrokenPipeError:
        pass  # psql stopped at an error: its message follows
    finally:
        if failed is not None:  # nothing must commit: psql ends its transaction without COMMIT
            psql.kill()
        with contextlib.suppress(BrokenPipeError):
            psql.stdin.close()
        errors = psql.stderr.read()
        code = psql.wait()
    if failed is not None:
        raise InfrastructureError(failed)
    if code != 0:
        raise InfrastructureError(f"The restore failed and changed nothing: {pg_tools.last_error(errors)}.")


def _check_is_backup(pg_restore: Path, path: Path) -> None:
    if not path.is_file():
        raise ValidationError(f"There is no backup file at {path}.")
    try:
        listing = pg_tools.run([pg_restore, "--list", path], what="reading the backup").stdout
    except InfrastructureError as exc:
        raise ValidationError(
            f"{path} is not a backup made by `cqrs-console backup` (a pg_dump custom-format file)."
        ) from exc
    if not re.search(r"^\d+; \d+ \d+ TABLE DATA \S+ events ", listing, re.MULTILINE):
        raise ValidationError(f"{path} is a database dump, but not of this console (it has no event log).")


def _max_event_txid(pg_restore: Path, path: Path) -> int:
    """The highest `events.txid` in the backup, read from its data as pg_restore writes it out
    (COPY text), without restoring anything."""
    proc = subprocess.Popen(
        [str(pg_restore), "--data-only", "--table=events", "--file=-", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    highest, column = 0, None
    for line in proc.stdout:
        if column is None:
            if re.match(r"COPY (?:public\.)?events \(", line):
                columns = line[line.index("(") + 1 : line.index(")")].split(", ")
                column = columns.index("txid")
            continue
        if line.startswith("\\."):
            break
        highest = max(highest, int(line.split("\t")[column]))
    proc.stdout.close()
    if proc.wait() != 0 or column is None:
        raise ValidationError(f"The event log in {path} cannot be read; check the file.")
    return highest


def _contents(url: str) -> tuple[int, bool]:
    """(events and audit rows held, whether the database has any table in our schemas)."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            tables = set(
                conn.execute(
                    text(
                        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname IN ('public', 'cqrs_shadow') AND c.relkind IN ('r', 'p', 'v', 'm')"
                    )
                ).scalars()
            )
            held = sum(
                conn.execute(text(f"SELECT count(*) FROM public.{name}")).scalar_one()
                for name in _VALUABLE
                if name in tables
            )
    finally:
        engine.dispose()
    return int(held), bool(tables)


def _major(url: str) -> int:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return server_major(conn)
    finally:
        engine.dispose()


def _next_txid_is_past(url: str, max_txid: int) -> bool:
    """Whether every transaction id the server hands out from now on is above `max_txid`."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            following = conn.execute(
                text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(following) > max_txid


def _raise_epoch(settings: Settings, max_txid: int) -> None:
    """Stop the embedded server, set its transaction-id epoch one above the backup's highest id's
    (every id handed out from then on is higher), start it again."""
    pgdata = embedded_pgdata(settings.data_dir)
    stop_embedded_server(settings.data_dir)
    user = pg_tools.cluster_owner(pgdata)
    pg_tools.run(
        [pg_tools.wheel_bin_dir() / "pg_resetwal", "--epoch", str((max_txid >> 32) + 1), "-D", pgdata],
        what="pg_resetwal",
        user=user,
    )


def _recreate_database(url: str) -> None:
    """DROP and CREATE the URL's database (its sessions are ended), from the maintenance database."""
    parsed = make_url(url)
    database = parsed.database
    admin = _engine(
        parsed.set(database="postgres").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{database}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    except Exception as exc:
        raise InfrastructureError(
            f"The database {database} could not be dropped and created again; restore into a new, empty "
            "database (point CQRS_DATABASE_URL at it)."
        ) from exc
    finally:
        admin.dispose()


_GRANTEE = re.compile(r"^(?:GRANT .* TO|REVOKE .* FROM) (.+?)(?: WITH GRANT OPTION)?(?: GRANTED BY .*)?;$")


def _ensure_roles(pg_restore: Path, path: Path, url: str, say: Callable[[str], None]) -> None:
    """The roles the backup grants rights to exist on the server before it is restored (roles
    belong to the server, not to a database's dump). Missing ones are created by running the
    migrations, their one home, on a scratch database."""
    with tempfile.TemporaryDirectory() as scratch:
        listing = Path(scratch) / "acl.list"
        entries = pg_tools.run([pg_restore, "--list", path], what="reading the backup").stdout.splitlines()
        listing.write_text("\n".join(line for line in entries if " ACL " in line) + "\n")
        grants = pg_tools.run(
            [pg_restore, "--use-list", listing, "--file=-", path], what="reading the backup"
        ).stdout
    names: set[str] = set()
    for line in grants.splitlines():
        found = _GRANTEE.match(line.strip())
        if found:
            names.update(n.strip().strip('"') for n in found.group(1).split(","))
    names -= {"PUBLIC"}
    if not names or not _missing_roles(url, names):
        return
    say("creating the database roles the backup grants rights to")
    scratch_name = f"cqrs_restore_roles_{uuid.uuid4().hex[:8]}"
    parsed = make_url(url)
    admin = _engine(
        parsed.set(database="postgres").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{scratch_name}"')
        try:
            migrate(parsed.set(database=scratch_name).render_as_string(hide_password=False))
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch_name}" WITH (FORCE)')
    finally:
        admin.dispose()
    missing = _missing_roles(url, names)
    if missing:
        raise InfrastructureError(
            f"The backup grants rights to roles this server lacks ({', '.join(sorted(missing))}); "
            "create them, then restore again."
        )


def _missing_roles(url: str, names: set[str]) -> set[str]:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            present = set(
                conn.execute(
                    text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:n)"), {"n": sorted(names)}
                ).scalars()
            )
    finally:
        engine.dispose()
    return names - present
