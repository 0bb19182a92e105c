"""A status snapshot as bytes and back: what a warm start reads instead of parsing a
million-line index again (store/taken_indexes.py keeps it beside the index version it was
read from). marshal of plain values, behind a header that names that version (its size
and modification time) and a digest of the payload: anything that does not match is
not used, and the index is parsed as on a cold start."""

from __future__ import annotations

import datetime as dt
import hashlib
import marshal
from types import MappingProxyType

from .index import IndexSnapshot
from .model import Revocation, RevocationReason

__all__ = ["decode_image", "encode_image"]

_MAGIC = b"hsm-ocsp index image 1\n"
_DIGEST = 32


def _time(when: dt.datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _when(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def encode_image(snapshot: IndexSnapshot, version: tuple[int, int]) -> bytes:
    """``snapshot`` (read from the index version of (size, mtime_ns) ``version``)."""
    good = [s for s, r in snapshot.entries.items() if r is None]
    revoked = [
        (
            s,
            r.revocation_time.timestamp(),
            None if r.reason is None else int(r.reason),
            _time(r.invalidity_date),
            r.hold_instruction,
        )
        for s, r in snapshot.entries.items()
        if r is not None
    ]
    payload = marshal.dumps((list(version), dict(snapshot.counts), good, revoked))
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def decode_image(data: bytes, version: tuple[int, int]) -> IndexSnapshot | None:
    """The snapshot, if ``data`` is a sound image of the index version ``version``."""
    if not data.startswith(_MAGIC):
        return None
    digest, payload = data[len(_MAGIC) : len(_MAGIC) + _DIGEST], data[len(_MAGIC) + _DIGEST :]
    if hashlib.sha256(payload).digest() != digest:
        return None
    try:
        said, counts, good, revoked = marshal.loads(payload)
        if tuple(said) != version:
            return None
        entries: dict[int, Revocation | None] = dict.fromkeys(good)
        shared: dict[tuple[object, ...], Revocation] = {}
        for serial, when, reason, invalidity, hold in revoked:
            key = (when, reason, invalidity, hold)
            revocation = shared.get(key)
            if revocation is None:
                revocation = shared[key] = Revocation(
                    _when(when),  # type: ignore[arg-type]
                    None if reason is None else RevocationReason(reason),
                    _when(invalidity),
                    hold,
                )
            entries[serial] = revocation
    except (ValueError, TypeError, EOFError):
        return None
    return IndexSnapshot(entries=entries, counts=MappingProxyType(dict(counts)))
