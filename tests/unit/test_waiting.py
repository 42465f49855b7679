"""tests/waiting.py: the bounded wait the tests use instead of fixed sleeps."""

from __future__ import annotations

import time

import pytest
from waiting import wait_until


def test_wait_until_returns_the_first_truthy_answer_as_soon_as_there_is_one():
    answers = iter([None, 0, [], "ready", "later"])

    assert wait_until(lambda: next(answers), 5, "an answer", interval=0.001) == "ready"


def test_wait_until_fails_the_test_naming_what_it_waited_for_once_the_bound_runs_out():
    started = time.monotonic()

    with pytest.raises(pytest.fail.Exception, match="timed out after 0.2 s waiting for the moon"):
        wait_until(lambda: False, 0.2, "the moon", interval=0.01)

    assert 0.2 <= time.monotonic() - started < 2
