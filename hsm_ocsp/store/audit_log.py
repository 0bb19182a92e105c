"""The audit trail's files (core/audit.py says what a line is): ``audit.path``, appended
to, renamed to ``PATH.1`` (and the older ones on, ``PATH.2`` ...) once it passes
``audit.max_bytes``, at most ``audit.keep`` old files kept. The chain goes on across
files: the first line of a new file carries the digest of the last line of the one
before. Written from the producer's event loop (one line, one ``write``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..core.audit import FIRST, digest, line

__all__ = ["AuditLog"]

log = logging.getLogger("hsm_ocsp.audit")


class AuditLog:
    def __init__(self, path: Path, *, max_bytes: int, keep: int, required: bool = False) -> None:
        self.path = path
        self.required = required
        self.max_bytes = max_bytes
        self.keep = keep
        self.lines = 0  # written by this process
        self.bytes = 0
        self._failing = False
        self._prev = self._last_digest()
        self._fd: int | None = None  # the current file, open for appending
        self._size = 0

    def _last_digest(self) -> str:
        """The digest of the trail's last line (the current file's, else the newest old
        file's), for the next line to carry."""
        for candidate in (self.path, self.path.with_name(self.path.name + ".1")):
            try:
                with candidate.open("rb") as file:
                    size = file.seek(0, os.SEEK_END)
                    file.seek(max(0, size - 65536))
                    lines = file.read().decode(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            if lines:
                return digest(lines[-1])
        return FIRST

    def write(self, fields: Mapping[str, object]) -> bool:
        """Append one line; False (logged once until it works again) if it cannot be."""
        text = line(fields, self._prev)
        data = (text + "\n").encode()
        try:
            self._rotate_if_full(len(data))
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._size = os.fstat(self._fd).st_size
            self._append(data)
        except OSError as exc:
            if not self._failing:
                log.error("audit trail %s: cannot write (%s)", self.path, exc)
                self._failing = True
            return False
        if self._failing:
            log.info("audit trail %s: written again", self.path)
            self._failing = False
        self._prev = digest(text)
        self.lines += 1
        self.bytes += len(data)
        return True

    def _append(self, data: bytes) -> None:
        """The whole line, or nothing: a line cut short (a full disk) is taken back, so
        the trail never holds half a line."""
        assert self._fd is not None
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError("no space for the whole line")
        except OSError:
            os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _rotate_if_full(self, adding: int) -> None:
        if self._fd is None or self._size + adding <= self.max_bytes:
            return
        self.close()
        for number in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if number == self.keep:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{number + 1}"))
        if self.keep:
            self.path.rename(self.path.with_name(self.path.name + ".1"))
        else:
            self.path.unlink()
