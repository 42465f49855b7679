"""`cqrs-console serve` with CQRS_AUTH_MODE=oidc refuses, before it listens and in one line, a
secrets.toml whose [auth] section st.login cannot use: otherwise every Sign in click would end
in Streamlit's redacted error page."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_serving import free_port, launcher_env


@pytest.mark.parametrize(
    ("secrets", "line"),
    [
        (
            None,
            "cqrs-console: secrets.toml has no [auth] section, which CQRS_AUTH_MODE=oidc needs: "
            "redirect_uri, cookie_secret, client_id, client_secret and server_metadata_url (docs/DEPLOY.md).",
        ),
        (
            '[auth]\nredirect_uri = "http://127.0.0.1:8501/oauth2callback"\ncookie_secret = "x"\n'
            'client_id = "research-console"\n',
            "cqrs-console: secrets.toml: [auth] has no client_secret, server_metadata_url, which "
            "CQRS_AUTH_MODE=oidc needs (docs/DEPLOY.md).",
        ),
    ],
)
def test_serve_refuses_an_unusable_auth_section_in_one_line(tmp_path, secrets, line):
    if secrets is not None:
        (tmp_path / ".streamlit").mkdir()
        (tmp_path / ".streamlit" / "secrets.toml").write_text(secrets)
    env = launcher_env(tmp_path, CQRS_AUTH_MODE="oidc", HOME=str(tmp_path))

    done = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "serve", "--server.port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [line]
