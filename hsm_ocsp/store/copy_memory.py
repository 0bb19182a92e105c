"""What a host that copies the fleet's answers remembers, so that it never goes back.

Redis can go back in time (a restart from an old snapshot, an old record written back
by anyone who holds its URL). A host that copies from it keeps, in
``state_dir/memory.lmdb``:
- for each key whose record was withdrawn, the producedAt and status of the record it
  held then (a tombstone): an answer older than that, or as old and the same, is not
  taken again (the replacement of a revocation, signed in the same second, is newer by
  its status);
- each serial it has seen revoked for a reason other than certificateHold: no answer
  for it that is not revoked is taken again.
The record it holds for a key is the third rule: nothing older replaces it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from pathlib import Path

import lmdb

from ..core.model import CertStatus
from ..core.shared_answers import StoredAnswer

__all__ = ["CopyMemory"]

log = logging.getLogger("hsm_ocsp.fleet")
_TOMB = struct.Struct("!qB")  # producedAt, status index
_STATUSES = list(CertStatus)


class CopyMemory:
    def __init__(self, directory: Path) -> None:
        path = directory / "memory.lmdb"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=1 << 32, subdir=True, max_dbs=0, mode=0o700)

    def withdrawn(self, records: Iterable[tuple[bytes, StoredAnswer]]) -> None:
        """Tombstones for records about to be withdrawn."""
        with self._env.begin(write=True) as txn:
            for key, record in records:
                tomb = _TOMB.pack(record.produced_at, _STATUSES.index(record.cert_status))
                txn.put(b"t" + key, tomb)

    def revoked(self, prefixes: Iterable[bytes]) -> None:
        """Serials seen revoked (not on hold): never anything else again."""
        with self._env.begin(write=True) as txn:
            for prefix in prefixes:
                txn.put(b"r" + prefix, b"")

    def takes(self, key: bytes, prefix: bytes, record: StoredAnswer) -> bool:
        """Whether ``record`` for ``key`` (of the serial ``prefix``) goes back on nothing
        seen before."""
        with self._env.begin() as txn:
            if record.cert_status is not CertStatus.REVOKED and txn.get(b"r" + prefix):
                return False
            tomb = txn.get(b"t" + key)
        if tomb is None:
            return True
        produced, status = _TOMB.unpack(tomb)
        if record.produced_at < produced:
            return False
        return not (record.produced_at == produced and _STATUSES[status] is record.cert_status)

    def close(self) -> None:
        self._env.close()
