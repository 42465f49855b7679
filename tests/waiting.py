"""Bounded waits on a condition, instead of fixed sleeps: a test waits exactly as long as the system
needs, and fails with what it was waiting for when the bound runs out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, message: str, interval: float = 0.05) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that;
    fail the test, naming `message` (what was awaited), when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {message}", pytrace=False)
        time.sleep(interval)
