"""An index file on disk, watched, with the last good snapshot kept in service."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

from ..core.errors import HsmOcspError, IndexFormatError
from ..core.index import DEFAULT_MAX_BYTES, IndexSnapshot, parse_index_stream
from ..core.index_delta import changed_lines, reread_changed
from ..store.ledger import Ledger
from .source_events import SILENT, SourceEvents

__all__ = ["TRANSIENT_ERRNOS", "IndexSource"]

log = logging.getLogger("hsm_ocsp.index")

StatKey = tuple[int, int, int, int]
_LOOK = 1 << 16  # bytes read at once looking for a line's end
_COPY = 1 << 20  # bytes copied at once
# How long a missing index may be gone before it is an error (a rename pair).
RENAME_GRACE = 0.2
# Failures of the moment, not of the file: the next tick reads it again.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EINTR, errno.EAGAIN, errno.ENOMEM})


def _key(info: os.stat_result) -> StatKey:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _cannot(path: Path, what: str, exc: OSError) -> IndexFormatError:
    return IndexFormatError(
        path, None, f"cannot {what}: {exc.strerror}", transient=exc.errno in TRANSIENT_ERRNOS
    )


class _File:
    """An open file read as index_delta.py reads it: by slices, with os.pread (only
    what is compared is read, and none of it stays: an mmap would count both versions
    in the process's resident memory)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(self.size)
        data = os.pread(self.fd, max(0, stop - start), start)
        if len(data) != max(0, stop - start):
            raise OSError(errno.EIO, "short read")  # truncated since: read it whole
        return data

    def find(self, sub: bytes, start: int = 0, /) -> int:
        while start < self.size:
            found = self[start : start + _LOOK].find(sub)
            if found >= 0:
                return start + found
            start += _LOOK
        return -1

    def rfind(self, sub: bytes, start: int = 0, end: int = -1, /) -> int:
        end = self.size if end < 0 else end
        while end > start:
            low = max(start, end - _LOOK)
            found = self[low:end].rfind(sub)
            if found >= 0:
                return low + found
            end = low
        return -1


class IndexSource:
    """One CA's ``index.txt``: loads it, notices changes, keeps the last good one.

    ``check()`` is blocking (it reads and parses the file): call it off the
    event loop. The snapshot is replaced by one attribute assignment, so a
    reader sees either the old or the new one, never a mix.

    A file replaced by a rename (what ``openssl ca`` does) is complete when it
    appears and is read at once. A file rewritten in place may be caught half
    written, even at a line's end: it is read once the watcher has seen the
    same size and times on two ticks in a row, and a read during which its size
    or times moved is thrown away.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ledger: Ledger | None = None,
        events: SourceEvents | None = None,
    ) -> None:
        """``ledger``: the revocations seen before, laid over every version read (a
        revocation never goes back), and what a version shows first written down."""
        self.name = name
        self.path = path
        self.max_bytes = max_bytes
        self.ledger = ledger
        # A version read whole that could not be taken up for a fault of ours (its
        # revocations could not be written down): its CA is not vouched for meanwhile.
        self.untaken = False
        self.snapshot: IndexSnapshot | None = None
        self.last_error: str | None = None
        # Monotonic time since which the file on disk has not been taken up
        # (None while the snapshot is the file's current content).
        self.failing_since: float | None = None
        self._seen: StatKey | None = None
        self._loaded_inode: int | None = None
        self._changing: StatKey | None = None  # an in-place change seen once, not yet read
        self.events = events if events is not None else SILENT
        self.loading = False  # a load is under way (in the watcher's thread)
        # The file read last, still open, and the snapshot read from it.
        self._kept: tuple[int, StatKey, IndexSnapshot] | None = None
        self._seed: tuple[int, StatKey, IndexSnapshot] | None = None  # see seed()
        # Monotonic time the last look at the file ended (whatever it found): a look
        # that never ends (a hung file system) leaves the snapshot unvouched for.
        self.checked_at = 0.0

    def fresh(self, within: float, now: float | None = None) -> bool:
        """Whether the file was looked at within ``within`` seconds (see store/vouch.py)."""
        return (time.monotonic() if now is None else now) - self.checked_at < within

    def _stat(self) -> StatKey:
        return _key(os.stat(self.path))

    def stale_for(self, now: float | None = None) -> float:
        """Seconds the file on disk has not been taken up (0 while it has)."""
        if self.failing_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.failing_since

    def load(self) -> IndexSnapshot:
        """Read and parse now; IndexFormatError if the file is unusable."""
        self.loading = True  # the producer's fill waits: the parse needs the GIL
        try:
            snapshot = self._load()
        finally:
            self.loading = False
        self.checked_at = time.monotonic()
        return snapshot

    def _load(self) -> IndexSnapshot:
        try:
            # O_NONBLOCK: opening a FIFO put in its place must not block the watcher.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise _cannot(self.path, "read", exc) from None
        info = os.fstat(fd)  # the key of the very file that is read
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise IndexFormatError(self.path, None, "not a regular file")
        self._seen = _key(info)
        if info.st_size > self.max_bytes:  # refused before a byte is read
            os.close(fd)
            raise IndexFormatError(
                self.path, None, f"{info.st_size} bytes, over ca.max_index_bytes ({self.max_bytes})"
            )
        try:
            snapshot = self._remembered(self._read(fd, info))
        except BaseException:
            os.close(fd)
            raise
        self.untaken = False
        self.snapshot = snapshot
        self._keep(fd, info, snapshot)
        self._loaded_inode = info.st_ino
        self._changing = None
        self.last_error = None
        self.failing_since = None
        self.events.reloaded(snapshot, None)
        return snapshot

    def _remembered(self, snapshot: IndexSnapshot) -> IndexSnapshot:
        if self.ledger is None:
            return snapshot
        try:
            return self.ledger.apply(self.name, snapshot)
        except HsmOcspError as exc:
            self.untaken = True
            self._seen = None  # read it again next tick
            raise IndexFormatError(
                self.path, None, f"not taken up: {exc}", transient=True
            ) from None

    def _read(self, fd: int, info: os.stat_result) -> IndexSnapshot:
        snapshot = self._changes_read(fd, info)
        if snapshot is None:  # parsed line by line: a large index is never held whole
            with os.fdopen(os.dup(fd), "rb", buffering=1 << 20) as file:
                try:
                    snapshot = parse_index_stream(file, self.path, self.snapshot)
                    read = file.tell()
                except OSError as exc:
                    raise _cannot(self.path, "read", exc) from None
        else:
            read = info.st_size
        after = os.fstat(fd)
        if (read, after.st_size, after.st_mtime_ns) != (info.st_size,) * 2 + (info.st_mtime_ns,):
            self._seen = None  # read it again next tick
            raise IndexFormatError(
                self.path, None, "changed while being read (written in place?)", transient=True
            )
        if not snapshot and self.snapshot:  # truncated by a writer that has not written yet
            raise IndexFormatError(
                self.path,
                None,
                f"empty, but the last good index had {len(self.snapshot)} entries",
            )
        return snapshot

    def _changes_read(self, fd: int, info: os.stat_result) -> IndexSnapshot | None:
        """The snapshot read from the lines that differ from the file read last, still
        open here (a rename over it does not free it); None if that cannot be done."""
        kept, base = self._kept, self.snapshot
        if kept is None and self._seed is not None:  # a first read, from a version kept
            kept, base = self._seed, self._seed[2]
        if not self._comparable(kept, base, info):
            return None
        assert kept is not None and base is not None
        try:
            then = os.fstat(kept[0])  # a rename changes its ctime, a write its mtime
            if (then.st_size, then.st_mtime_ns) != kept[1][1:3] or not then.st_size:
                return None  # the old file was written since it was read
            old, new = _File(kept[0], then.st_size), _File(fd, info.st_size)
            snapshot = reread_changed(old, new, base, self.path)
        except OSError:
            return None
        if snapshot is not None and kept is self._seed:
            log.info(
                "index %s for CA %s read from its changes since the version kept (a warm start)",
                self.path,
                self.name,
            )
        return snapshot

    @staticmethod
    def _comparable(
        kept: tuple[int, StatKey, IndexSnapshot] | None,
        base: IndexSnapshot | None,
        info: os.stat_result,
    ) -> bool:
        """Whether the file now can be read from its changes against ``kept``: not for a
        first read, an empty file, or the same file rewritten in place."""
        return (
            kept is not None
            and kept[2] is base
            and bool(info.st_size)
            and kept[1][0] != info.st_ino
        )

    def _keep(self, fd: int, info: os.stat_result, snapshot: IndexSnapshot) -> None:
        """Keep the file just read open, to compare the next version with."""
        if self._kept is not None:
            os.close(self._kept[0])
        self._kept = (fd, _key(info), snapshot)
        self._unseed()

    def seed(self, copy: Path, base: IndexSnapshot) -> None:
        """Read the first version from its changes against ``copy``, an earlier version
        whose snapshot is ``base`` (a warm start: store/taken_indexes.py), instead of
        parsing it whole. The copy is not taken into service: it is only compared."""
        try:
            fd = os.open(copy, os.O_RDONLY)
        except OSError:
            return
        self._unseed()
        self._seed = (fd, _key(os.fstat(fd)), base)

    def _unseed(self) -> None:
        if self._seed is not None:
            os.close(self._seed[0])
            self._seed = None

    def copy_into(self, out: BinaryIO) -> None:
        """Write the version in service, as read (the file kept open), to ``out``."""
        kept = self._kept
        if kept is None or kept[2] is not self.snapshot:
            raise OSError(errno.ESTALE, "no version in service is kept open")
        fd, size = kept[0], kept[1][1]
        done = 0
        while done < size:
            chunk = os.pread(fd, min(_COPY, size - done), done)
            if not chunk:
                raise OSError(errno.EIO, "short read")
            out.write(chunk)
            done += len(chunk)

    def changed_since(self, copy: Path) -> list[int] | None:
        """Serials whose lines differ between ``copy`` (a version taken before) and the
        version in service; None when that cannot be said cheaply (see index_delta)."""
        kept = self._kept
        if kept is None or kept[2] is not self.snapshot:
            return None
        try:
            fd = os.open(copy, os.O_RDONLY)
        except OSError:
            return None
        try:
            old, new = _File(fd, os.fstat(fd).st_size), _File(kept[0], kept[1][1])
            return changed_lines(old, new, self.path)
        except OSError:
            return None
        finally:
            os.close(fd)

    def close(self) -> None:
        self._unseed()
        if self._kept is not None:
            os.close(self._kept[0])
            self._kept = None

    def check(self, *, force: bool = False) -> bool:
        """Reload if the file changed (or ``force``); True if a new snapshot is in."""
        try:
            return self._check(force)
        finally:
            self.checked_at = time.monotonic()

    def _check(self, force: bool) -> bool:
        try:
            key = self._stat_settled()
        except OSError as exc:
            self._failed(_cannot(self.path, "stat", exc))
            return False
        if key == self._seen and not force:
            return False
        if not force and key[0] == self._loaded_inode and key != self._changing:
            # Changed in place: wait one tick for the writer to finish.
            self._changing = key
            self._failing()
            return False
        try:
            self.load()
        except IndexFormatError as exc:
            if not exc.transient:
                self._seen = key  # do not re-parse the same broken file every second
            self._failed(exc)
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

    def _failing(self) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def _failed(self, exc: IndexFormatError) -> None:
        """Log and count a failure; one that repeats tick after tick is said once."""
        self._failing()
        if self.last_error == str(exc) and (exc.transient or exc.line is None):
            return
        self.last_error = str(exc)
        log.error("index for CA %s not reloaded, keeping the last good one: %s", self.name, exc)
        self.events.failed(exc)
