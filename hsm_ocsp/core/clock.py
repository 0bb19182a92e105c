"""Now, to the second: every cached answer asks, so the datetime is made once a second."""

from __future__ import annotations

import datetime as dt
import functools
import time


def utcnow() -> dt.datetime:
    """Now, to the second (every cached answer asks)."""
    return utc_at(int(time.time()))


@functools.lru_cache(maxsize=1)
def utc_at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)
