"""Child processes that do not outlive their parent (Linux): the served app's projection worker,
the app a benchmark serves. A parent killed outright (SIGKILL, or SIGTERM without cleanup) would
otherwise leave them running, still taking CPU and holding their locks."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

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
