"""Waiting for something a server does, one way for every test: poll, bounded in time."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(check: Callable[..., object], timeout: float = 20, step: float = 0.1) -> float:
    """Seconds until ``check()`` is true; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not reached in time"
        time.sleep(step)
    return time.monotonic() - started


def within(check: Callable[..., object], timeout: float, step: float = 0.05) -> float | None:
    """Seconds until ``check()`` is true, or None if it is not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    return None
