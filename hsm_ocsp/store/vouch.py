"""The producer's word, per CA, that the host's store says what the CA's index says.

Workers serve stored answers without the index: a revocation reaches them only when
the producer withdraws the serial's old answers. Whatever keeps that from happening
(the producer dead, unable to start, hung on a file system; a withdrawal that cannot
be committed, a full disk) must not leave the old answer in service. So the producer
vouches for each CA once a tick: "I have looked at its index within the last second
and every change I read is withdrawn from the store". A worker serves a CA's stored
answers only while that word is younger than ``VOUCH_FOR`` seconds; after that it asks
the producer (which answers from the index it holds, or tryLater), so a fault of any
kind and any length costs at most tryLater, never an old "good".

The word is a CLOCK_MONOTONIC time (system-wide, so every process compares it) in a
small file every process maps: one slot per CA, written once a tick, read per request.
The file is written whole when made, never sparse: a full disk cannot fail a write to
it (a page of a sparse file touched on a full tmpfs kills the process with SIGBUS).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["VOUCH_FOR", "Vouches", "preallocated_map"]

VOUCH_FOR = 5.0  # seconds a worker serves a CA's stored answers after the last word
# The CA name's digest, the monotonic time of the word, and which store it is given for
# (its directory's inode: a store set aside and made anew is another one, and a worker
# that still maps the old one is not vouched for).
_SLOT = struct.Struct("=16sdQ")
_SLOTS = 256
_NAME = "vouch.v2"  # the file (slots of another layout are never read)


def preallocated_map(path: Path, size: int) -> mmap.mmap:
    """A file of ``size`` bytes, written (not truncated) to that size, mapped shared."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        have = os.fstat(fd).st_size
        if have < size:
            os.pwrite(fd, bytes(size - have), have)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _digest(ca: str) -> bytes:
    return hashlib.sha256(ca.encode()).digest()[:16]


class Vouches:
    """The slots of ``directory/vouch``, one per CA name."""

    def __init__(
        self, directory: Path, cas: Sequence[str], store: int, *, producer: bool = False
    ) -> None:
        """The producer makes the slots of ``cas``; a worker finds them (a CA whose slot
        the producer has not made yet is not vouched for). ``store``: the identity of the
        store this process holds (LmdbStore.identity)."""
        self._store = store
        self._map = preallocated_map(directory / _NAME, _SLOT.size * _SLOTS)
        self._producer = producer
        self._offsets: dict[str, int | None] = {ca: self._slot(ca) for ca in cas}

    def _slot(self, ca: str) -> int | None:
        """The CA's slot: the one holding its digest, else (the producer) the first free."""
        digest = _digest(ca)
        free = None
        for i in range(_SLOTS):
            held = _SLOT.unpack_from(self._map, i * _SLOT.size)[0]
            if held == digest:
                return i * _SLOT.size
            if free is None and held == bytes(16):
                free = i
        if not self._producer:
            return None
        if free is None:
            raise ValueError("more than 256 CAs in one state directory")
        _SLOT.pack_into(self._map, free * _SLOT.size, digest, 0.0, 0)
        return free * _SLOT.size

    def vouch(self, ca: str, when: float | None = None) -> None:
        """The producer's word for ``ca``, now (or at ``when``, a monotonic time)."""
        offset = self._offsets[ca]
        assert offset is not None, "only the producer vouches"
        when = time.monotonic() if when is None else when
        _SLOT.pack_into(self._map, offset, _digest(ca), when, self._store)

    def withdraw_word(self, ca: str) -> None:
        """No word for ``ca`` from now on (until the next vouch)."""
        self.vouch(ca, 0.0)

    def age(self, ca: str, now: float | None = None) -> float:
        """Seconds since the last word for ``ca`` (inf if none, or a CA not served)."""
        offset = self._offsets.get(ca)
        if offset is None and ca in self._offsets:  # the producer may have made it since
            offset = self._offsets[ca] = self._slot(ca)
        if offset is None:
            return float("inf")
        _, when, store = _SLOT.unpack_from(self._map, offset)
        if not when or store != self._store:  # for another store than the one held here
            return float("inf")
        return float((time.monotonic() if now is None else now) - when)

    def vouched(self, ca: str, now: float | None = None) -> bool:
        return self.age(ca, now) < VOUCH_FOR

    def close(self) -> None:
        self._map.close()
