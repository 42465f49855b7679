"""`make test` must never touch the user's data directory nor leave a server running (#22)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from server_processes import postmasters_under, stop_servers

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("session_probe.py")


def test_a_test_session_leaves_the_users_data_dir_alone_and_no_server_behind():
    # Short: the child's sockets live below it. Not below this session's own temporary directory,
    # which under pytest-xdist is already two levels deep (the controller's, then the worker's).
    base = "/tmp" if os.access("/tmp", os.W_OK) else None
    scratch = Path(tempfile.mkdtemp(prefix="cqi-", dir=base))
    user_data = scratch / "user-data"  # the session must not even create it
    child_tmp = scratch / "t"
    child_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQRS_")}
    env.update(CQRS_DATA_DIR=str(user_data), TMPDIR=str(child_tmp))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(PROBE)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert "3 passed" in result.stdout
        assert not user_data.exists()
        assert postmasters_under(user_data, child_tmp) == []
        assert list(child_tmp.iterdir()) == []  # the session removed its own directory
    finally:
        stop_servers(postmasters_under(scratch))
        shutil.rmtree(scratch, ignore_errors=True)
