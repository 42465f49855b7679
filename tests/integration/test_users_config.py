"""A misspelt role in secrets.toml (issue 15, item 14) stops `cqrs-console serve` before it
listens, with one line naming the user, the role and the valid roles."""

from __future__ import annotations

import subprocess
import sys

from test_serving import free_port, launcher_env


def test_serve_refuses_a_role_we_do_not_have_in_one_line(tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        '[users.otto]\npassword_hash = "$2b$04$abcdefghijklmnopqrstuuJ1bSHuEq5yq6tbIHHyCiBLdLl0DUa1y"\n'
        'role = "Operator"\n'
    )
    env = launcher_env(tmp_path, CQRS_AUTH_MODE="password")

    done = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "serve", "--server.port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cqrs-console: secrets.toml: user 'otto' has the role 'Operator', which is not one of "
        "analyst, researcher, operator, admin."
    ]
