"""The HTTP headers of a Reply (RFC 5019 / RFC 9919 caching), worked out once a Reply:
only a GET's max-age moves with the clock."""

from __future__ import annotations

import datetime as dt
import functools
from email.utils import format_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reply import Reply

__all__ = ["ERROR_HEADERS", "ReplyHeaders", "http_date"]

ERROR_HEADERS = {"Cache-Control": "no-cache"}


@functools.lru_cache(maxsize=1024)  # a stored reply's two dates, on every answer
def http_date(when: dt.datetime) -> str:
    return format_datetime(when.astimezone(dt.UTC), usegmt=True)


class ReplyHeaders:
    """aiohttp copies the headers into each response, so these dicts are shared."""

    __slots__ = ("_get", "_max_age", "_next_update", "post", "successful")

    def __init__(self, reply: Reply) -> None:
        self.successful = reply.successful
        self._max_age = -1
        self._next_update = 0.0
        if not reply.successful:
            self.post = self._get = ERROR_HEADERS
            return
        assert reply.produced_at is not None and reply.next_update is not None
        assert reply.etag is not None
        self.post = {
            "ETag": reply.etag,
            "Last-Modified": http_date(reply.produced_at),
            "Expires": http_date(reply.next_update),
        }
        self._get = self.post
        self._next_update = reply.next_update.timestamp()

    def get(self, now: float) -> dict[str, str]:
        """The headers of a GET answer at Unix time ``now``."""
        if not self.successful:
            return self._get
        max_age = max(0, int(self._next_update - now))
        if max_age != self._max_age:
            self._get = {
                **self.post,
                "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
            }
            self._max_age = max_age
        return self._get
