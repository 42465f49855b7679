"""Child processes that do not outlive their parent (Linux): the served app's projection worker,
the app a benchmark serves. A parent killed outright (SIGKILL, or SIGTERM without cleanup) would
otherwise leave them running, still taking CPU and holding their locks."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import types
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG = 1


def parent_death_signal(parent_pid: int) -> Callable[[], None] | None:
    """What the child runs between fork and exec on Linux: SIGTERM when its parent thread ends,
    and exit at once if the parent is already gone. None elsewhere (no such call).

    Only an async-signal-safe system call runs there: prctl is looked up before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the call
            os._exit(1)

    return die_with_parent


@contextlib.contextmanager
def spawning_without_main() -> Iterator[None]:
    """Start `spawn` children inside this block: they do not run this process's `__main__` file
    again. A process that ran Streamlit scripts in-process (AppTest, the test suite) has the last
    script as `__main__` (Streamlit's script runner puts it there), and a spawned child would run
    the whole page (app.py) before its target."""
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__: nothing to run again
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved
