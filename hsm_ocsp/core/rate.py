"""A pace: at most so many starts a second, for work that must not crowd the token."""

from __future__ import annotations

import asyncio
import time

__all__ = ["Rate", "Window"]


class Rate:
    """At most ``per_second`` starts a second (0: no limit)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Window:
    """At most ``limit`` at once: ``high`` while each finishes quickly, ``low`` once they
    take over ``slow`` seconds (they queue in a slow token: more in flight then only
    queues, and a change or a client's signature sent next would wait behind them all)."""

    def __init__(self, low: int, high: int, slow: float = 0.05) -> None:
        self.low, self.high, self.slow = max(1, low), max(1, low, high), slow
        self.limit = self.high
        self._busy = 0
        self._seconds = 0.0  # a moving average of how long one took
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self._busy >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self._busy += 1

    def release(self) -> None:
        self._busy -= 1
        self._freed.set()

    def took(self, seconds: float) -> None:
        """One finished in ``seconds`` (its wait in the token included)."""
        self._seconds += (seconds - self._seconds) / 8
        self.limit = self.low if self._seconds > self.slow else self.high
