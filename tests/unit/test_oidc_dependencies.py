"""CQRS_AUTH_MODE=oidc signs in through Streamlit's st.login, which needs what Streamlit's own
`auth` extra names (Authlib and httpx: Authlib's Starlette client is built on httpx). Without
one of them every "Sign in" click ends in a server error, so the project must ask for each."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import requires
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def distribution_name(requirement: str) -> str:
    """The normalised distribution name a requirement starts with ("Authlib>=1.3.2" -> "authlib")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match[1]).lower()


def test_the_project_asks_for_everything_streamlits_auth_extra_needs():
    auth_extra = {
        distribution_name(r)
        for r in requires("streamlit") or []
        if re.search(r"""extra\s*==\s*["']auth["']""", r)
    }
    assert auth_extra, "Streamlit no longer has an `auth` extra: see what st.login needs now"
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    asked_for = {distribution_name(d) for d in dependencies}

    assert sorted(auth_extra - asked_for) == []
