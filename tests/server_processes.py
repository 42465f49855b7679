"""Embedded PostgreSQL servers found by data directory: the test session stops any it left
behind, and tests prove none is left (see tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil

SERVER_NAMES = ("postgres", "postmaster")


def _data_dir(proc: psutil.Process) -> Path | None:
    """A postmaster's working directory is its data directory; `-D` names it too."""
    try:
        return Path(proc.cwd()).resolve()
    except psutil.Error:
        pass
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    for flag, value in zip(cmdline, cmdline[1:], strict=False):
        if flag == "-D":
            return Path(value).resolve()
    return None


def postmasters_under(*roots: Path) -> list[psutil.Process]:
    """PostgreSQL servers (not their backends) whose data directory is inside one of `roots`."""
    resolved = [Path(r).resolve() for r in roots]
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] not in SERVER_NAMES:
            continue
        try:
            parent = proc.parent()
            if parent is not None and parent.name() in SERVER_NAMES:
                continue  # a backend or auxiliary process of some server
        except psutil.Error:
            continue
        data_dir = _data_dir(proc)
        if data_dir is not None and any(data_dir == r or r in data_dir.parents for r in resolved):
            found.append(proc)
    return found


def stop_servers(servers: list[psutil.Process], timeout: float = 30.0) -> None:
    """Fast shutdown (as `pg_ctl -m fast stop`), then SIGKILL for any that did not stop."""
    for proc in servers:
        try:
            proc.send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(servers, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group `process` leads (a server started with `start_new_session=True`
    releases what it holds on the way out), SIGKILL it after a grace period, then SIGKILL any child
    that outlived the leader (same group id)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
