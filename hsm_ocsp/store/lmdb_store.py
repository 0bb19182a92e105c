"""The host's answer store: one LMDB file in the state directory, memory-mapped by
every worker (one writer at a time, readers never wait), so the answers take the same
pages in every process and survive a restart.

Keys are the CA's name and the CertID's DER; values a fixed header, the etag and the
response. A store that cannot be read or written is skipped, never fatal: the worker
signs (or answers from its own cache) as without one, and says so once.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import lmdb

from ..core.model import CertStatus
from ..core.shared_answers import StoredAnswer

__all__ = ["DEFAULT_MAP_BYTES", "LmdbStore"]

log = logging.getLogger("hsm_ocsp.store")
DEFAULT_MAP_BYTES = 1 << 30  # address space, not memory: pages are mapped as used
_HEADER = struct.Struct("!qqq8s8sBH")  # produced, next, refresh, signer, truth, status, etag
_STATUSES = list(CertStatus)


def encode(answer: StoredAnswer) -> bytes:
    etag = answer.etag.encode()
    header = _HEADER.pack(
        answer.produced_at,
        answer.next_update,
        answer.refresh_at,
        answer.signer,
        answer.truth,
        _STATUSES.index(answer.cert_status),
        len(etag),
    )
    return header + etag + answer.body


def decode(data: bytes) -> StoredAnswer | None:
    """The answer, or None for bytes that are not one (another version's, say)."""
    if len(data) < _HEADER.size:
        return None
    produced, next_update, refresh, signer, truth, status, etag_length = _HEADER.unpack_from(data)
    start = _HEADER.size + etag_length
    if status >= len(_STATUSES) or len(data) <= start:
        return None
    return StoredAnswer(
        body=data[start:],
        cert_status=_STATUSES[status],
        produced_at=produced,
        next_update=next_update,
        refresh_at=refresh,
        signer=signer,
        truth=truth,
        etag=data[_HEADER.size : start].decode(),
    )


class LmdbStore:
    """The answers of this host, in ``directory/answers.lmdb``; open it after fork."""

    def __init__(self, directory: Path, *, map_bytes: int = DEFAULT_MAP_BYTES) -> None:
        self.path = directory / "answers.lmdb"
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # sync off: the store is a cache of signed answers; a crash may lose the
        # last writes (they are signed again), never make a record half-written.
        self._env = lmdb.open(
            str(self.path), map_size=map_bytes, subdir=True, sync=False, metasync=False,
            readahead=False, max_readers=1024, mode=0o700,
        )  # fmt: skip
        self._failed = False

    def get(self, key: bytes) -> StoredAnswer | None:
        try:
            with self._env.begin(buffers=False) as txn:
                data = txn.get(key)
        except lmdb.Error as exc:
            self._fault("read", exc)
            return None
        return None if data is None else decode(data)

    def put(self, key: bytes, answer: StoredAnswer) -> None:
        try:
            with self._env.begin(write=True) as txn:
                txn.put(key, encode(answer))
        except lmdb.Error as exc:  # MapFullError included: the answer stays unshared
            self._fault("write", exc)

    def records(self) -> list[tuple[str, int, StoredAnswer]]:
        """Every record: its CA's name, its size in bytes, the answer."""
        out = []
        with self._env.begin(buffers=False) as txn:
            for key, data in txn.cursor():
                answer = decode(data)
                if answer is not None:
                    out.append((key.split(b"\0", 1)[0].decode(), len(key) + len(data), answer))
        return out

    def entries(self) -> int:
        return int(self._env.stat()["entries"])

    def close(self) -> None:
        self._env.close()

    def _fault(self, what: str, exc: lmdb.Error) -> None:
        if not self._failed:
            self._failed = True
            log.warning("answer store %s: cannot %s (%s); answering without it", self.path,
                        what, exc)  # fmt: skip
