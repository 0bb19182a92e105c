"""The host's answer store: one LMDB file in the state directory, memory-mapped by
every worker (one writer at a time, readers never wait), so the answers take the same
pages in every process and survive a restart.

Keys and values are bytes (core/shared_answers.py says what they hold). A store that
cannot be read or written is skipped, never fatal: the process signs (or answers from
its own cache) as without one, and says so once.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lmdb

from ..core.errors import HsmOcspError
from .vouch import preallocated_map

__all__ = ["DEFAULT_MAP_BYTES", "LmdbStore", "set_aside"]

log = logging.getLogger("hsm_ocsp.store")
DEFAULT_MAP_BYTES = 1 << 34  # address space, not memory: pages are mapped as used
_BATCH = 10_000  # records deleted in one write transaction
_COUNTER = struct.Struct("=Q")


class LmdbStore:
    """The answers of this host, in ``directory/answers.lmdb``; open it after fork."""

    def __init__(
        self,
        directory: Path,
        *,
        map_bytes: int = DEFAULT_MAP_BYTES,
        readonly: bool = False,
        discard_damaged: bool = False,
    ) -> None:
        """``readonly``: look, never make or change a file (``store stats`` run by root
        must not leave a root-owned file the service cannot open). ``discard_damaged``
        (the producer): a store that cannot be opened (a power loss while unsynced, a
        damaged disk) is set aside and a new one made; its answers are produced again."""
        self.path = directory / "answers.lmdb"
        if not readonly:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._env = self._open(map_bytes, readonly)
        except lmdb.Error as exc:
            if not discard_damaged:
                raise HsmOcspError(f"answer store {self.path}: cannot open: {exc}") from None
            aside = set_aside(self.path)
            log.error(
                "answer store %s cannot be opened (%s): set aside as %s, and made anew "
                "(every answer is produced again)",
                self.path,
                exc,
                aside.name,
            )
            self.path.mkdir(mode=0o700)
            self._env = self._open(map_bytes, readonly)
        # Which store this is: a store set aside and made anew is another (store/vouch.py).
        self.identity = os.stat(self.path).st_ino
        self._failed = False
        self._generation = (
            mmap.mmap(-1, _COUNTER.size) if readonly else _map_generation(self.path / "generation")
        )
        # A write that depends on the index (put's still_true) and a withdrawal for an
        # index change do not interleave: the one that comes second sees the other.
        self.lock = threading.Lock()

    def _open(self, map_bytes: int, readonly: bool) -> lmdb.Environment:
        # sync off: the store is a cache of signed answers; a crash may lose the last
        # writes (they are signed again); a store a power loss damaged is set aside.
        return lmdb.open(
            str(self.path),
            map_size=map_bytes,
            subdir=True,
            sync=False,
            metasync=False,
            readahead=False,
            max_readers=1024,
            mode=0o700,
            readonly=readonly,
            create=not readonly,
        )

    def get(self, key: bytes) -> bytes | None:
        try:
            with self._env.begin(buffers=False) as txn:
                data: bytes | None = txn.get(key)
        except lmdb.Error as exc:
            self._fault("read", exc)
            return None
        return data

    def put(self, key: bytes, value: bytes, still_true: Callable[[], bool] | None = None) -> bool:
        """Store ``value``; False if ``still_true`` said no or the write failed."""
        with self.lock:
            if still_true is not None and not still_true():
                return False
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(key, value)
            except lmdb.Error as exc:  # MapFullError included: the answer stays unshared
                self._fault("write", exc)
                return False
        return True

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Many records in one write transaction (a copy from the fleet's Redis)."""
        if not items:
            return
        with self.lock:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
            except lmdb.Error as exc:
                self._fault("write", exc)
            finally:  # a copied record may replace one of another status: read anew
                self._bump()

    def generation(self) -> int:
        """A number that changes whenever records are withdrawn or deleted: a reader may
        keep what it read while the number stays (a memory read, no transaction)."""
        return int(_COUNTER.unpack_from(self._generation)[0])

    def _bump(self) -> None:
        _COUNTER.pack_into(self._generation, 0, self.generation() + 1)

    def withdraw(self, prefixes: Iterable[bytes]) -> int:
        """Delete every record whose key begins with one of ``prefixes``."""
        deleted = 0
        with self.lock:
            try:
                with self._env.begin(write=True) as txn:
                    cursor = txn.cursor()
                    for prefix in prefixes:
                        if not cursor.set_range(prefix):
                            continue
                        while cursor.key().startswith(prefix):
                            deleted += 1
                            if not cursor.delete():  # moved to the next record
                                break
            except lmdb.Error as exc:  # said every time: a stored answer may outlive its truth
                log.error("answer store %s: cannot withdraw answers (%s)", self.path, exc)
                return -1
            finally:
                self._bump()  # after the commit: a reader that sees the new number reads anew
        return deleted

    def delete(self, keys: Iterable[bytes]) -> int:
        deleted = 0
        batch: list[bytes] = []
        for key in keys:
            batch.append(key)
            if len(batch) >= _BATCH:
                deleted += self._delete(batch)
                batch = []
        return deleted + self._delete(batch)

    forget = delete  # one host's store: nothing else to keep apart

    def _delete(self, keys: list[bytes]) -> int:
        with self.lock:
            with self._env.begin(write=True) as txn:
                deleted = sum(bool(txn.delete(key)) for key in keys)
            self._bump()
        return deleted

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key begins with ``prefix``, in one read snapshot."""
        with self._env.begin(buffers=False) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return
            for key, value in cursor:
                if not key.startswith(prefix):
                    return
                yield key, value

    def clear_stale_readers(self) -> int:
        """Free the reader slots of processes that died inside a read (SIGKILL, OOM):
        while one is held, LMDB reuses no page freed after it, and the file only grows."""
        try:
            return int(self._env.reader_check())
        except lmdb.Error as exc:
            self._fault("check readers", exc)
            return 0

    def entries(self) -> int:
        return int(self._env.stat()["entries"])

    def close(self) -> None:
        self._env.close()
        self._generation.close()

    def _fault(self, what: str, exc: lmdb.Error) -> None:
        if not self._failed:
            self._failed = True
            log.warning(
                "answer store %s: cannot %s (%s); answering without it", self.path, what, exc
            )


def set_aside(path: Path) -> Path:
    """Rename a damaged store out of the way (kept for a look; never read again)."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    path.rename(aside)
    return aside


def _map_generation(path: Path) -> mmap.mmap:
    """The shared withdrawal counter: 8 bytes in a file every process maps (written
    whole, not sparse: a full disk must not turn its first write into SIGBUS)."""
    return preallocated_map(path, _COUNTER.size)
