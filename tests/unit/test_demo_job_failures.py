"""What the Demo page shows when a background seed or live load stops."""

import logging

from cqrs_core.app.demo import _failure_line
from cqrs_core.infra.errors import ValidationError


def test_a_refusal_is_shown_in_its_own_words():
    assert _failure_line("seed", ValidationError("Seed at most 50,000 workflows.")) == (
        "Seed at most 50,000 workflows."
    )


def test_a_bug_shows_one_sentence_and_logs_the_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="cqrs_core"):
        line = _failure_line("live load", RuntimeError("password=hunter2 in a stack frame"))
    assert line == "The live load stopped on an unexpected error; the server log has the details."
    assert "hunter2" not in line
    record = next(r for r in caplog.records if r.getMessage() == "demo live load failed")
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
