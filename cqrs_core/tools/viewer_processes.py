"""The processes of `bench-viewers` and their CPU: the app it serves (or the one it is pointed
at), the command load in a process of its own, and a meter of CPU time per group of processes.

The meter samples every group's processes once a second and adds up the CPU time each process
used since its previous sample; a process first seen after it was born counts in full, one
already running when the meter started counts from then. `mark()` samples at once and returns
the running totals; `usage(a, b)` turns two marks into % of one core.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from cqrs_core.infra.config import Settings
from cqrs_core.infra.processes import parent_death_signal, spawning_without_main
from cqrs_core.service import CQRSService
from cqrs_core.tools.viewer_browser import BenchProblem
from cqrs_core.tools.workload.runners import traffic_service

REPO = Path(__file__).resolve().parents[2]  # app.py and .streamlit/ live here, as for `make run`
APP_START_TIMEOUT = 120.0
LOAD_THREADS = 4
LOAD_HORIZON = 86_400.0  # s: a load phase runs until it is told to stop

SERVER_NAMES = ("postgres", "postmaster")
BROWSER_NAMES = ("chromium", "chrome", "headless_shell", "node")  # node: the Playwright driver


@dataclass(frozen=True)
class Mark:
    at: float  # time.monotonic()
    cpu_seconds: dict[str, float]  # per group, since the meter started
    machine_busy_seconds: float  # every core's non-idle time, the whole machine


def tree(root: psutil.Process | None, exclude_names: tuple[str, ...] = ()) -> list[psutil.Process]:
    """`root` and its descendants, without processes named in `exclude_names`."""
    if root is None:
        return []
    try:
        found = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for proc in found:
        try:
            if proc.name() not in exclude_names:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def descendants_named(root: psutil.Process, names: tuple[str, ...]) -> list[psutil.Process]:
    """Descendants of `root` whose name starts with one of `names` (the browser's processes)."""
    out = []
    try:
        children = root.children(recursive=True)
    except psutil.Error:
        return []
    for proc in children:
        try:
            if proc.name().startswith(names):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def postmaster_of(backend_pid: int) -> psutil.Process | None:
    """The PostgreSQL server whose backend is `backend_pid`, if it runs on this machine."""
    proc = process(backend_pid)
    try:
        parent = proc.parent() if proc is not None else None
        if parent is not None and parent.name() in SERVER_NAMES:
            return parent
    except psutil.Error:
        pass
    return None


def listener_of(url: str) -> psutil.Process | None:
    """The process of this machine listening on `url`'s port, or None."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return process(conn.pid)
    return None


def is_local_host(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(str(a).startswith("127.") or str(a) == "::1" for a in addresses)


class CpuMeter:
    """Samples `groups` (name -> a function listing the group's processes now) every `tick` s."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]], tick: float = 1.0) -> None:
        self.groups = groups
        self.tick = tick
        self.totals = dict.fromkeys(groups, 0.0)
        self.seen_pids: dict[str, set[int]] = {name: set() for name in groups}
        self._last: dict[tuple[int, float], float] = {}
        self._last_sample = time.time()
        self._machine_start = self._machine_busy()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def __enter__(self) -> CpuMeter:
        self.sample()  # every process running now counts from here
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self.sample()

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def sample(self) -> None:
        with self._lock:
            now = time.time()
            for name, members in self.groups.items():
                for proc in members():
                    try:
                        with proc.oneshot():
                            key = (proc.pid, proc.create_time())
                            times = proc.cpu_times()
                    except psutil.Error:
                        continue
                    used = times.user + times.system
                    before = self._last.get(key)
                    if before is not None:
                        self.totals[name] += max(0.0, used - before)
                    elif key[1] >= self._last_sample - 0.5:
                        self.totals[name] += used  # born since the last sample: all of it is new
                    self._last[key] = used
                    self.seen_pids[name].add(proc.pid)
            self._last_sample = now

    def mark(self) -> Mark:
        self.sample()
        with self._lock:
            return Mark(time.monotonic(), dict(self.totals), self._machine_busy() - self._machine_start)

    @staticmethod
    def usage(start: Mark, end: Mark) -> tuple[float, dict[str, float], float]:
        """(seconds, % of one core per group, % of one core the whole machine was busy)."""
        seconds = max(1e-9, end.at - start.at)
        per_group = {
            name: 100 * (end.cpu_seconds[name] - start.cpu_seconds[name]) / seconds
            for name in end.cpu_seconds
        }
        return seconds, per_group, 100 * (end.machine_busy_seconds - start.machine_busy_seconds) / seconds


def app_service(settings: Settings, url: str, role: str | None, pool: int) -> CQRSService:
    """A service as the app's: the runtime role's rights, a rate limit above a person's (the
    seed and the load come from a handful of owners)."""
    direct = settings.direct_database_url if settings.behind_pooler else None
    return traffic_service(settings, url, role, pool_size=pool, direct_url=direct)


# ---------------------------------------------------------------- the app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as response:
            return bool(response.read().decode().strip() == "ok")
    except OSError:
        return False


@contextlib.contextmanager
def served_app(
    database_url: str, work_dir: Path, say: Callable[[str], None]
) -> Iterator[tuple[str, psutil.Process | None]]:
    """The app as `make run` serves it: `cqrs-console serve` in the repository, sign-in off, on
    a free loopback port, in a process group of its own (stopping it takes any child too). Every
    process in its tree counts as the app's CPU; if `make run` comes to start other processes
    beside it (a supervised worker), they belong here too."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CQRS_DATABASE_URL", "CQRS_READ_DATABASE_URL")}
    env.update(CQRS_DATABASE_URL=database_url, CQRS_AUTH_MODE="none", CQRS_DATA_DIR=str(work_dir / "data"))
    command = [sys.executable, "-m", "cqrs_core", "serve", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    log_path = work_dir / "serve.log"
    with log_path.open("wb") as log:
        app = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # SIGTERM to the app when the bench ends, however it ends (its finally blocks do not
            # run when it is killed): an app left behind took 15 % of a core from every later run.
            preexec_fn=parent_death_signal(os.getpid()),
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + APP_START_TIMEOUT
        while not _answers(base_url):
            if app.poll() is not None or time.monotonic() > deadline:
                lines = log_path.read_text(errors="replace").strip().splitlines() or ["(nothing logged)"]
                said = f"exited with {app.returncode}" if app.poll() is not None else "did not answer in time"
                raise BenchProblem(f"The app {said}; its last line: {lines[-1][:300]}")
            time.sleep(0.2)
        say(f"app served at {base_url} (pid {app.pid})")
        yield base_url, process(app.pid)
    finally:
        _stop_group(app)


def _stop_group(app: subprocess.Popen) -> None:
    """SIGTERM the app's process group (Streamlit releases the runtime on the way out), SIGKILL
    whatever is left after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(app.pid, signal.SIGTERM)
    try:
        app.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(app.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        app.wait(timeout=10)


def running_app(url: str) -> tuple[str, psutil.Process | None]:
    base_url = url.rstrip("/")
    if not is_local_host(base_url):
        raise BenchProblem(f"{url} is not on this machine: the app's CPU can only be measured here.")
    if not _answers(base_url):
        raise BenchProblem(f"Nothing answers at {url}: start the app (`make run`) or give its address.")
    listener = listener_of(base_url)
    if listener is None:
        raise BenchProblem(f"No process of this machine listens at {url} (or it is not ours to see).")
    return base_url, listener


# ---------------------------------------------------------------- the command load


class CommandLoad:
    """A steady command load in a process of its own (sent from this one, its threads would
    compete with the browser driver for the GIL). Each `begin()`/`end()` pair is one phase: the
    load runs during it and `end()` returns what its client measured."""

    def __init__(self, settings: Settings, url: str, role: str | None, rate: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.control: Any = ctx.Queue()
        self.results: Any = ctx.Queue()
        self.rate = rate
        self.process = ctx.Process(
            target=_load_process,
            name="bench-viewers-load",
            daemon=True,
            args=(settings, url, role, rate, self.control, self.results),
        )
        self.pid: int | None = None

    def __enter__(self) -> CommandLoad:
        with spawning_without_main():
            self.process.start()
        self.pid = self.process.pid
        ready = self._result(120)
        if ready != "ready":
            self.__exit__()
            raise BenchProblem(f"The command load did not start: {ready}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.control.put(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)

    def begin(self) -> None:
        self.control.put("start")

    def end(self) -> Any:
        """Stop this phase's load; its LoadReport (tools.workload), as measured at the client."""
        self.control.put("stop")
        report = self._result(60)
        if isinstance(report, str):
            raise BenchProblem(f"The command load failed: {report}")
        return report

    def _result(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(queue.Empty):
                return self.results.get(timeout=0.5)
            if not self.process.is_alive():
                return f"the load process ended (exit code {self.process.exitcode})"
            if time.monotonic() > deadline:
                return f"no answer from the load process within {timeout:.0f} s"


def _load_process(
    settings: Settings, url: str, role: str | None, rate: float, control: Any, results: Any
) -> None:
    """The load process: build a service as the app's, say "ready", then for each "start" run
    the steady load until "stop" and send back its LoadReport (or one line saying what failed)."""
    from cqrs_core.tools.workload.runners import run_steady_load

    try:
        service = app_service(settings, url, role, pool=LOAD_THREADS + 2)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(f"{type(exc).__name__}: {exc}")
        return
    try:
        results.put("ready")
        while control.get() == "start":
            stop = threading.Event()
            out: list[Any] = []

            def send(stop: threading.Event = stop, out: list[Any] = out) -> None:
                try:
                    out.append(
                        run_steady_load(
                            service, rate=rate, duration=LOAD_HORIZON, threads=LOAD_THREADS, stop=stop
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
                    out.append(f"{type(exc).__name__}: {exc}")

            sender = threading.Thread(target=send, name="load", daemon=True)
            sender.start()
            message = control.get()
            stop.set()
            sender.join()
            results.put(out[0] if out else "the load ended without a report")
            if message is None:
                break
    finally:
        service.close()
