"""Time as answers take it: now, to the second (every cached answer asks, so the
datetime is made once a second), and when a signed answer is signed again (RFC 9919
and the CA/B Baseline Requirements 4.9.10)."""

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


SHORT_VALIDITY = dt.timedelta(hours=16)


REFRESH_MARGIN = dt.timedelta(hours=8)


REFRESH_AT_MOST = dt.timedelta(days=4)


def refresh_time(this_update: dt.datetime, next_update: dt.datetime | None) -> dt.datetime:
    """When a cached answer is signed anew (RFC 9919 and CA/B BR 4.9.10).

    Under 16 hours of validity: at half of it. Otherwise at least 8 hours before
    nextUpdate, and no later than 4 days after thisUpdate.
    """
    assert next_update is not None
    validity = next_update - this_update
    if validity < SHORT_VALIDITY:
        return this_update + validity / 2
    return min(next_update - REFRESH_MARGIN, this_update + REFRESH_AT_MOST)
