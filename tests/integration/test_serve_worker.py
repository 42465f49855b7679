"""Where the projections run when the console is served (issue 14): `cqrs-console serve` with
CQRS_PROJECTIONS_IN=worker starts and supervises one `cqrs-console worker` child next to
Streamlit, starts it again after it dies, stops it with the server (saying what keeps running)
and never leaves it behind, even when serve itself is killed; `app` runs them in the Streamlit
process as before; every mode opens the runtime before the first visitor. Real processes, real
PostgreSQL, no browser."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from server_processes import postmasters_under, stop_process_group
from sqlalchemy import text
from test_serving import free_port, launcher_env, wait_healthy
from waiting import wait_until
from workflow_histories import bulk_workload

from cqrs_core import CommandFactory
from cqrs_core.app.runtime import open_runtime
from cqrs_core.cli.serve import WorkerSupervisor
from cqrs_core.infra.config import load_settings
from cqrs_core.infra.db import start_embedded_server, stop_embedded_server
from cqrs_core.ops.health import SharedStatus, scheduler_check
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.projections.engine.verify import verify

STOP_TIMEOUT = 30.0  # serve's own bound is 15 s for the worker, plus Streamlit's shutdown
OPENED = "the console's runtime is open"


@dataclass
class Served:
    process: subprocess.Popen
    port: int
    out: Path
    err: Path

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def workers(self) -> list[psutil.Process]:
        """The `cqrs-console worker` children of serve, still running."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if is_worker(c)]


def is_worker(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE and proc.cmdline()[-2:] == ["cqrs_core", "worker"]
    except psutil.Error:
        return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


class Launcher:
    """Starts `cqrs-console serve` with the given CQRS_ settings and returns once
    /_stcore/health answers; `cleanup` kills what is left (serve's group and any worker seen)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Served] = []
        self.workers: set[int] = set()

    def __call__(self, **settings: str) -> Served:
        port = free_port()
        env = launcher_env(self.directory, CQRS_PROJECTION_POLL_SECONDS="0.2", **settings)
        if "CQRS_DATABASE_URL" not in settings:
            env.pop("CQRS_DATABASE_URL")
        out, err = self.directory / f"serve-{port}.out", self.directory / f"serve-{port}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "cqrs_core", "serve", "--server.port", str(port)],
                cwd=self.directory,
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        served = Served(process, port, out, err)
        self.started.append(served)
        wait_healthy(process, port)
        return served

    def remember_workers(self) -> None:
        for served in self.started:
            self.workers.update(w.pid for w in served.workers())

    def cleanup(self) -> None:
        self.remember_workers()
        for served in self.started:
            stop_process_group(served.process)
        for pid in self.workers:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def serve(tmp_path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


def the_worker(served: Served) -> psutil.Process:
    return wait_until(
        lambda: (served.workers() or [None])[0], 30, "serve to start its projection worker", interval=0.1
    )


def owners(manager: ProjectionManager) -> set[str | None]:
    return {s.owner for s in manager.status()}


def owner(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


@pytest.fixture
def observer(engine, db_url):
    m = ProjectionManager(engine, load_settings(database_url=db_url))
    yield m
    m.close()


def create_workflow(service, title: str) -> str:
    command = CommandFactory(actor="alice", role="researcher").create_research_workflow(
        title=title, research_question="Does it show?", methodology="experimental"
    )
    service.execute_command(command)
    return str(command.workflow_id)


def summary_has(engine, workflow_id: str) -> bool:
    with engine.connect() as c:
        return bool(
            c.execute(
                text("SELECT count(*) FROM workflow_summary WHERE workflow_id = :w"), {"w": workflow_id}
            ).scalar_one()
        )


def stop_with(served: Served, signum: int) -> None:
    os.killpg(served.process.pid, signum)  # as a terminal's Ctrl-C reaches the foreground group
    served.process.wait(STOP_TIMEOUT)


# ---------------------------------------------------------------- worker mode


def test_serve_runs_the_projections_in_a_worker_child_that_is_started_again_after_kill_9(
    serve, service, engine, observer, db_url, store
):
    served = serve(CQRS_DATABASE_URL=db_url, CQRS_PROJECTIONS_IN="worker")
    first = the_worker(served)
    assert first.pid != served.process.pid
    assert os.getpgid(first.pid) == first.pid != os.getpgid(served.process.pid)  # a group of its own
    wait_until(lambda: owners(observer) == {owner(first.pid)}, 30, "the worker to take every projection")

    workflow = create_workflow(service, "Seen through the worker")
    wait_until(lambda: summary_has(engine, workflow), 20, "the worker to project the new workflow")

    # Slow every checkpoint down so that the kill lands in the middle of the catch-up.
    with engine.begin() as c:
        c.exec_driver_sql(
            "CREATE FUNCTION dawdle() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$;"
            "CREATE TRIGGER dawdle BEFORE UPDATE ON projection_checkpoints FOR EACH ROW EXECUTE FUNCTION dawdle();"
        )
    bulk_workload(store, 150, tasks=4)
    wait_until(
        lambda: min(s.events_applied for s in observer.status()) >= 300,
        30,
        "the worker to apply some batches",
    )
    os.kill(first.pid, signal.SIGKILL)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER dawdle ON projection_checkpoints")

    second = wait_until(
        lambda: next((w for w in served.workers() if w.pid != first.pid), None),
        30,
        "serve to start the worker again",
        interval=0.1,
    )
    assert "(signal SIGKILL); starting it again" in served.err.read_text()
    later = create_workflow(service, "Seen after the restart")
    wait_until(
        lambda: owners(observer) == {owner(second.pid)} and all(s.lag_events == 0 for s in observer.status()),
        60,
        "the restarted worker to catch up",
    )
    assert summary_has(engine, later)
    with engine.connect() as c:
        total = c.execute(text("SELECT count(*) FROM events")).scalar_one()
    assert {s.name: s.events_applied for s in observer.status()} == dict.fromkeys(PROJECTION_NAMES, total)
    report = verify(engine)  # every read model equals a fresh replay: nothing applied twice or lost
    assert report.ok, "\n".join(report.lines())


def test_sigterm_on_serve_stops_the_worker_and_says_the_database_keeps_running(serve, db_url):
    served = serve(CQRS_DATABASE_URL=db_url)  # worker mode by default
    worker = the_worker(served)
    stop_with(served, signal.SIGTERM)
    assert served.process.returncode == 0, served.output()
    assert gone(worker.pid)
    lines = [line for line in served.out.read_text().splitlines() if line.startswith("cqrs-console: ")]
    assert len(lines) == 1, served.output()
    assert lines[0].startswith(
        "cqrs-console: Stopped the console and its projection worker; the database at "
    )
    assert "keeps running" in lines[0] and "secret" not in lines[0]


@pytest.fixture(scope="module")
def embedded_data_dir(tmp_path_factory) -> Iterator[Path]:
    """A data directory whose embedded server runs (started once for this module)."""
    data_dir = tmp_path_factory.mktemp("embedded") / "data"
    start_embedded_server(data_dir, "research_console")
    yield data_dir
    stop_embedded_server(data_dir)


def test_ctrl_c_stops_serve_and_its_worker_and_the_embedded_server_keeps_running(serve, embedded_data_dir):
    served = serve(CQRS_DATA_DIR=str(embedded_data_dir))
    worker = the_worker(served)
    wait_until(lambda: OPENED in served.err.read_text(), 60, "the runtime to open")
    stop_with(served, signal.SIGINT)
    assert served.process.returncode == 0, served.output()
    assert gone(worker.pid)
    [line] = [line for line in served.out.read_text().splitlines() if line.startswith("cqrs-console: ")]
    assert line == (
        "cqrs-console: Stopped the console and its projection worker; the embedded PostgreSQL server keeps "
        f"running for {embedded_data_dir.resolve()} (stop it with `cqrs-console db stop`)."
    )
    assert postmasters_under(embedded_data_dir)  # it does keep running


def test_killing_serve_outright_does_not_leave_its_worker_running(serve, db_url):
    served = serve(CQRS_DATABASE_URL=db_url, CQRS_PROJECTIONS_IN="worker")
    worker = the_worker(served)
    serve.remember_workers()
    served.process.kill()  # SIGKILL: serve cannot stop anything itself
    served.process.wait(10)
    wait_until(lambda: gone(worker.pid), 20, "the orphaned worker to stop")


# ---------------------------------------------------------------- the other modes


@pytest.mark.parametrize(
    ("settings", "runs_here"),
    [({"CQRS_PROJECTIONS_IN": "app"}, True), ({"CQRS_RUN_PROJECTIONS": "false"}, False)],
    ids=["app", "legacy-false-is-none"],
)
def test_app_and_none_modes_start_no_worker(serve, db_url, observer, service, engine, settings, runs_here):
    served = serve(CQRS_DATABASE_URL=db_url, **settings)
    wait_until(lambda: OPENED in served.err.read_text(), 60, "the runtime to open")
    if runs_here:  # today's behaviour: the Streamlit process itself holds every projection
        wait_until(
            lambda: owners(observer) == {owner(served.process.pid)}, 30, "the app to take every projection"
        )
        workflow = create_workflow(service, "Seen through the app")
        wait_until(lambda: summary_has(engine, workflow), 20, "the app to project the new workflow")
    else:
        assert owners(observer) == {None}
    assert served.workers() == []
    stop_with(served, signal.SIGTERM)
    [line] = [line for line in served.out.read_text().splitlines() if line.startswith("cqrs-console: ")]
    assert line.startswith("cqrs-console: Stopped the console; ")


# ---------------------------------------------------------------- the first visitor


def test_serve_opens_the_runtime_before_the_first_visitor(serve, db_url, engine):
    served = serve(CQRS_DATABASE_URL=db_url)

    def app_connections() -> int:
        with engine.connect() as c:
            return c.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'cqrs-console-app'"
                )
            ).scalar_one()

    # Nobody has opened a page: the runtime's engine is connected all the same.
    wait_until(app_connections, 60, "the runtime's engine to connect without a visitor", interval=0.2)
    assert OPENED in served.err.read_text()


# ---------------------------------------------------------------- the health report


def test_the_scheduler_line_names_the_supervised_worker(db_url, monkeypatch):
    monkeypatch.setenv("CQRS_DATABASE_URL", db_url)
    monkeypatch.setenv("CQRS_PROJECTION_POLL_SECONDS", "0.2")
    supervisor = WorkerSupervisor()
    runtime = open_runtime(load_settings(database_url=db_url, projections_in="worker"), lambda: supervisor)
    statuses = SharedStatus(runtime.service.projections, max_age_seconds=0)
    try:
        assert runtime.scheduler is None  # nothing runs in this process

        def scheduler_line() -> str:
            return runtime.health(max_age_seconds=0).component("scheduler").detail

        assert scheduler_line() == "the supervised projection worker is starting"
        supervisor.start()
        pid = wait_until(lambda: supervisor.pid, 20, "the supervisor to start a worker")
        wait_until(
            lambda: scheduler_line() == f"in the supervised worker (pid {pid})",
            30,
            "the worker to hold the projections",
        )
        none_here = scheduler_check(None, "none", None, statuses)(runtime.engine)
        assert (
            none_here.detail
            == f"none in this process (CQRS_PROJECTIONS_IN=none); projections run in {owner(pid)}"
        )
        assert supervisor.stop() == "exit code 0"  # SIGTERM: the worker stops after its batch
        assert gone(pid)
        after = scheduler_check(None, "none", None, statuses)(runtime.engine)
        assert after.detail.endswith("; no process runs them now")
    finally:
        supervisor.stop()
        runtime.close()
