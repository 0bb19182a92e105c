"""A pace: at most so many starts a second, for work that must not crowd the token."""

from __future__ import annotations

import asyncio
import time

__all__ = ["Rate"]


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
