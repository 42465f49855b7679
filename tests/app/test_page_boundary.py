"""A fault that no page caught reaches the person as one sentence, never as a traceback, and the
served configuration keeps it that way (no error details, no file watcher reloading modules under
running sessions)."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import logging
import tomllib
from pathlib import Path

from page_harness import app_env, shared_db_url, texts  # noqa: F401
from streamlit.testing.v1 import AppTest

from cqrs_core.app.screens import workflow_list

APP = Path(__file__).resolve().parents[2] / "app.py"
CONFIG = Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml"
SECRET = "password=hunter2 at /srv/cqrs/app.py line 12"


def test_a_fault_no_page_caught_shows_one_sentence_and_logs_the_details(
    shared_db_url, app_env, monkeypatch, caplog
):
    app_env(shared_db_url)

    def broken() -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(workflow_list, "show", broken)
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    at.switch_page("pages/workflows.py")
    with caplog.at_level(logging.ERROR, logger="cqrs_console.app"):
        at.run()

    assert not at.exception  # nothing escaped to Streamlit's own error display
    shown = texts(at)
    assert "Something went wrong on this page; the server log has the details." in shown
    assert "hunter2" not in shown and "Traceback" not in shown
    assert any("hunter2" in (r.exc_text or "") or "hunter2" in str(r.exc_info) for r in caplog.records)
    # the sidebar and the navigation still work: the person can go elsewhere
    assert at.sidebar.markdown or at.sidebar.caption


def test_the_served_app_shows_no_error_details_and_watches_no_files():
    config = tomllib.loads(CONFIG.read_text())

    assert config["client"]["showErrorDetails"] == "none"
    assert config["server"]["fileWatcherType"] == "none"
