"""The embedded server's lifecycle across processes: shared start, crash recovery, `db stop`.

Every start happens in a child process, as it does in real use (`make run`, a second browser
tab's app process, a worker). Data dirs live directly under /tmp because a PostgreSQL unix
socket path must stay under ~100 characters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from cqrs_core.db import embedded_pgdata, stop_embedded_server

DATABASE = "research_console"

# Starts (or attaches to) the server, proves it can query, and reports what it saw.
START_AND_QUERY = """
import json, sys, time
from pathlib import Path
import psycopg2
from sqlalchemy.engine import make_url
from cqrs_core.db import start_embedded_server

data_dir, start_at, sql = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(max(0.0, start_at - time.time()))
url = start_embedded_server(data_dir, sys.argv[4])
u = make_url(url)
conn = psycopg2.connect(dbname=u.database, user=u.username, host=u.query["host"], port=u.query["port"])
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute(sql)
    rows = cur.fetchall() if cur.description else []
print(json.dumps({"url": url, "rows": rows}))
"""


def child_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env["CQRS_DATA_DIR"] = str(data_dir)
    return env


def start_in_child(data_dir: Path, sql: str = "SELECT 1", start_at: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", START_AND_QUERY, str(data_dir), str(start_at), sql, DATABASE],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(data_dir),
    )


def result_of(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def postmasters(data_dir: Path) -> list[psutil.Process]:
    """Postgres server processes for this data dir (backends do not carry -D in their command line)."""
    pgdata = str(embedded_pgdata(data_dir))
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and pgdata in cmdline:
            found.append(proc)
    return found


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cqrs_core", *args],
        capture_output=True, text=True, env=child_env(data_dir), timeout=120,
    )


@pytest.fixture
def data_dir():
    path = Path(tempfile.mkdtemp(prefix="cqe-", dir="/tmp"))
    try:
        yield path
    finally:
        stop_embedded_server(path)
        for proc in postmasters(path):  # a server pg_ctl could not stop must not outlive the test
            proc.kill()
        shutil.rmtree(path, ignore_errors=True)


def test_two_processes_starting_at_once_share_one_server(data_dir):
    start_at = time.time() + 3  # both children are past their imports by then
    first = start_in_child(data_dir, "SELECT current_database()", start_at)
    second = start_in_child(data_dir, "SELECT current_database()", start_at)

    a, b = result_of(first), result_of(second)

    assert a["url"] == b["url"]
    assert a["rows"] == b["rows"] == [[DATABASE]]
    assert len(postmasters(data_dir)) == 1


def test_crashed_server_is_recovered_on_next_start_with_data_intact(data_dir):
    result_of(start_in_child(data_dir, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept')"))
    [postmaster] = postmasters(data_dir)

    postmaster.send_signal(signal.SIGKILL)
    postmaster.wait(timeout=10)
    assert (embedded_pgdata(data_dir) / "postmaster.pid").exists()  # left behind, as after a real crash

    recovered = result_of(start_in_child(data_dir, "SELECT body FROM notes"))

    assert recovered["rows"] == [["kept"]]
    assert len(postmasters(data_dir)) == 1


def test_stale_pid_file_naming_another_program_is_recovered(data_dir):
    result_of(start_in_child(data_dir, "SELECT 1"))
    [postmaster] = postmasters(data_dir)
    postmaster.send_signal(signal.SIGKILL)
    postmaster.wait(timeout=10)
    # After a crash the old pid can be reused by an unrelated process; postgres would refuse to
    # start while that pid is alive.
    squatter = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = embedded_pgdata(data_dir) / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")

        recovered = result_of(start_in_child(data_dir, "SELECT 1"))
    finally:
        squatter.kill()
        squatter.wait()

    assert recovered["rows"] == [[1]]
    assert len(postmasters(data_dir)) == 1


def test_db_stop_stops_the_shared_server_and_says_so_when_none_runs(data_dir):
    result_of(start_in_child(data_dir, "SELECT 1"))
    assert len(postmasters(data_dir)) == 1

    stopped = cli(data_dir, "db", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "Stopped" in stopped.stdout
    assert postmasters(data_dir) == []

    again = cli(data_dir, "db", "stop")
    assert again.returncode == 0, again.stderr
    assert "No embedded PostgreSQL server was running" in again.stdout


def test_db_start_then_health_reports_the_embedded_server(data_dir):
    started = cli(data_dir, "db", "start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("Embedded PostgreSQL is running")

    migrated = cli(data_dir, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    health = cli(data_dir, "health", "--json")
    assert health.returncode == 0, health.stdout + health.stderr
    assert json.loads(health.stdout)["status"] == "healthy"
    assert len(postmasters(data_dir)) == 1


def test_health_does_not_start_a_stopped_embedded_server(data_dir):
    result = cli(data_dir, "health")

    assert result.returncode == 1
    assert "is not running" in result.stdout
    assert postmasters(data_dir) == []
