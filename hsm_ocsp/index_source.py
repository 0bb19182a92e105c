"""An index file on disk, watched, with the last good snapshot kept in service."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from .errors import IndexFormatError
from .index import IndexSnapshot, parse_index_stream

__all__ = ["IndexSource"]

log = logging.getLogger("hsm_ocsp.index")

StatKey = tuple[int, int, int, int]
# How long a missing index may be gone before it is an error (a rename pair).
RENAME_GRACE = 0.2


def _key(info: os.stat_result) -> StatKey:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class IndexSource:
    """One CA's ``index.txt``: loads it, notices changes, keeps the last good one.

    ``check()`` is blocking (it reads and parses the file): call it off the
    event loop. The snapshot is replaced by one attribute assignment, so a
    reader sees either the old or the new one, never a mix.
    """

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.snapshot: IndexSnapshot | None = None
        self.last_error: str | None = None
        self._seen: StatKey | None = None
        self.on_reload: Callable[[IndexSnapshot], None] | None = None
        self.on_error: Callable[[IndexFormatError], None] | None = None

    def _stat(self) -> StatKey:
        return _key(os.stat(self.path))

    def load(self) -> IndexSnapshot:
        """Read and parse now; IndexFormatError if the file is unusable."""
        try:
            # O_NONBLOCK: opening a FIFO put in its place must not block the watcher.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise IndexFormatError(self.path, None, f"cannot read: {exc.strerror}") from None
        info = os.fstat(fd)  # the key of the very file that is read
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise IndexFormatError(self.path, None, "not a regular file")
        file = os.fdopen(fd, "rb", buffering=1 << 20)
        self._seen = _key(info)
        with file:  # parsed line by line: a large index is never held whole
            try:
                snapshot = parse_index_stream(file, self.path, self.snapshot)
            except OSError as exc:
                raise IndexFormatError(self.path, None, f"cannot read: {exc.strerror}") from None
        if not snapshot and self.snapshot:  # truncated by a writer that has not written yet
            raise IndexFormatError(
                self.path,
                None,
                f"empty, but the last good index had {len(self.snapshot)} entries",
            )
        self.snapshot = snapshot
        self.last_error = None
        if self.on_reload is not None:
            self.on_reload(snapshot)
        return snapshot

    def check(self, *, force: bool = False) -> bool:
        """Reload if the file changed (or ``force``); True if a new snapshot is in."""
        try:
            key = self._stat_settled()
        except OSError as exc:
            key = None
            problem = IndexFormatError(self.path, None, f"cannot stat: {exc.strerror}")
            if self.last_error != str(problem):
                self._report(problem)
            return False
        if key == self._seen and not force:
            return False
        try:
            self.load()
        except IndexFormatError as exc:
            self._seen = key  # do not re-parse the same broken file every second
            self._report(exc)
            return False
        log.info(
            "index %s reloaded for CA %s: %d entries",
            self.path,
            self.name,
            len(self.snapshot or ()),
        )
        return True

    def _stat_settled(self) -> StatKey:
        """Stat the file; one that is missing is looked at again a moment later.

        ``openssl ca`` renames index.txt away and then index.txt.new into place:
        between the two renames there is no file, and that is no error.
        """
        try:
            return self._stat()
        except FileNotFoundError:
            time.sleep(RENAME_GRACE)
            return self._stat()

    def _report(self, exc: IndexFormatError) -> None:
        self.last_error = str(exc)
        log.error("index for CA %s not reloaded, keeping the last good one: %s", self.name, exc)
        if self.on_error is not None:
            self.on_error(exc)
