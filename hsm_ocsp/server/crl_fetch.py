"""Where a CRL comes from: a file looked at each tick, or a URL fetched in the background.

A fetch is a conditional GET (If-None-Match, If-Modified-Since) with a timeout and a
body cut at ``max_bytes``; its result waits in ``pending`` for the source's tick. A
fetch that fails leaves the last bytes in place: the CRL in service stays.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["FetchError", "Place", "place_for"]

log = logging.getLogger("hsm_ocsp.crl")

USER_AGENT = "hsm-ocsp"
FETCH_TIMEOUT = 10.0  # seconds: to connect, and between two reads of the body
WHOLE_EVERY = 10  # fetches: one in this many asks without validators


class FetchError(Exception):
    """The place could not be read; the message names it and why."""


class Place:
    """One CRL's place. ``take()`` gives new bytes once (None: nothing new)."""

    name: str

    def take(self) -> bytes | None:
        raise NotImplementedError

    def ready(self) -> None:
        """Wait for the first look (a URL's first fetch, bounded by its timeout)."""

    def again(self) -> None:
        """The bytes last taken were not used for a fault of the moment: give them again."""

    def close(self) -> None:
        """Stop what runs in the background."""


class FilePlace(Place):
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.name = str(path)
        self.path, self.max_bytes = path, max_bytes
        self._seen: tuple[int, int, int, int] | None = None

    def take(self) -> bytes | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise FetchError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            if key == self._seen:
                return None
            if not stat.S_ISREG(info.st_mode):
                raise FetchError(f"{self.path}: not a regular file")
            if info.st_size > self.max_bytes:
                self._seen = key
                raise FetchError(
                    f"{self.path}: {info.st_size} bytes, over crl_max_bytes ({self.max_bytes})"
                )
            with os.fdopen(os.dup(fd), "rb") as file:
                data = file.read(self.max_bytes + 1)
            self._seen = key
            return data
        except OSError as exc:
            raise FetchError(f"{self.path}: cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)

    def again(self) -> None:
        self._seen = None


class UrlPlace(Place):
    """A CRL over HTTP, fetched every ``interval`` seconds in a thread of its own (a slow
    server never holds up the source's tick)."""

    def __init__(self, url: str, max_bytes: int, interval: float) -> None:
        self.name = url
        self.url, self.max_bytes, self.interval = url, max_bytes, interval
        self._etag: str | None = None
        self._modified: str | None = None
        self._lock = threading.Lock()
        self._pending: bytes | None = None
        self._last: bytes | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()
        self.fetches = 0  # done, for tests and metrics
        self._first = threading.Event()
        self._thread: threading.Thread | None = None  # started at the first look (after fork)

    def _started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="crl-fetch", daemon=True)
            self._thread.start()

    def take(self) -> bytes | None:
        self._started()
        with self._lock:
            data, self._pending = self._pending, None
            error, self._error = self._error, None
        if error is not None:
            raise FetchError(error)
        return data

    def again(self) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = self._last

    def ready(self) -> None:
        self._started()
        self._first.wait(2 * FETCH_TIMEOUT + 1)

    def fetch_now(self) -> None:
        self._kick.set()

    def close(self) -> None:
        self._stop.set()
        self._kick.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._fetch()
            except FetchError as exc:
                with self._lock:
                    self._error = str(exc)
            else:
                if data is not None:
                    with self._lock:
                        self._pending = self._last = data
            self.fetches += 1
            self._first.set()
            self._kick.wait(self.interval)
            self._kick.clear()

    def _body(self, response: Any) -> bytes:
        """The response's body, refused past crl_max_bytes (by its Content-Length before
        a byte is read, else by what was read)."""
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError(f"{self.url}: {length} bytes, over crl_max_bytes ({self.max_bytes})")
        data = response.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise FetchError(f"{self.url}: over crl_max_bytes ({self.max_bytes})")
        return bytes(data)

    def _fetch(self) -> bytes | None:
        request = urllib.request.Request(self.url, headers={"User-Agent": USER_AGENT})
        # Conditional, but every tenth fetch whole: a server's validators have a
        # granularity (nginx: the second, and the size), and a CRL replaced by one of the
        # same size within the same second would look unchanged for ever.
        if self.fetches % WHOLE_EVERY:
            if self._etag:
                request.add_header("If-None-Match", self._etag)
            if self._modified:
                request.add_header("If-Modified-Since", self._modified)
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
                data = self._body(response)
                self._etag = response.headers.get("ETag")
                self._modified = response.headers.get("Last-Modified")
                return data
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return None
            raise FetchError(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise FetchError(f"{self.url}: {exc.reason}") from None
        except (OSError, ValueError) as exc:  # a timeout, a reset, a bad URL
            raise FetchError(f"{self.url}: {exc}") from None


def place_for(where: str, max_bytes: int, interval: float) -> Place:
    """A file path or an http(s) URL."""
    if where.startswith(("http://", "https://")):
        return UrlPlace(where, max_bytes, interval)
    return FilePlace(Path(where), max_bytes)
