"""A revocation never goes back: the pure rule.

A serial once seen revoked stays revoked, with the date and reason first seen, whatever
a later version of the index says: a rewrite caught half-way, an operator restoring an
older file from a backup, a copy that lags. Two exceptions: a certificateHold that the
index releases (the serial good again, or gone) is a release, as RFC 5280 allows; and an
operator's explicit, logged ``hsm-ocsp revocations forget``.

``remember`` lays what was seen before over a new snapshot and says what is new.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from .index import IndexSnapshot
from .model import Revocation, RevocationReason

__all__ = ["Remembered", "remember"]

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Remembered:
    snapshot: IndexSnapshot  # the index, with every remembered revocation laid over it
    new: dict[int, Revocation]  # revocations this index shows first (or shows changed)
    released: list[int]  # holds the index no longer shows: good (or unknown) again
    kept: list[int]  # revocations the index dropped, answered revoked all the same


def remember(snapshot: IndexSnapshot, held: Mapping[int, Revocation]) -> Remembered:
    entries = snapshot.entries
    # First seen, or changed by the CA (a hold made final, say): the newest is kept, so
    # that a serial on hold and then revoked for good is never "released" later.
    new = {s: r for s, r in entries.items() if r is not None and held.get(s) != r}
    released, kept = [], []
    for serial, revocation in held.items():
        now = entries.get(serial, _MISSING)
        if now is not None and now is not _MISSING:
            continue  # still revoked (a changed reason or date is the index's to make)
        if revocation.reason is RevocationReason.CERTIFICATE_HOLD:
            released.append(serial)
        else:
            kept.append(serial)
    if kept:
        snapshot = _laid_over(snapshot, {serial: held[serial] for serial in kept})
    return Remembered(snapshot, new, released, kept)


def _laid_over(snapshot: IndexSnapshot, kept: dict[int, Revocation]) -> IndexSnapshot:
    """``snapshot`` with the revocations it dropped, ``kept``, laid over it."""
    entries = snapshot.entries
    # A copy of the same kind (AllIssued: a CRL's serials not listed are good).
    merged = type(entries)(entries) if isinstance(entries, dict) else dict(entries)
    good = sum(1 for s in kept if entries.get(s, _MISSING) is None)
    merged.update(kept)
    counts = dict(snapshot.counts)
    counts["R"] = counts.get("R", 0) + len(kept)
    counts["V"] = max(0, counts.get("V", 0) - good)
    return dataclasses.replace(
        snapshot, entries=merged, counts=MappingProxyType(counts), delta=None
    )
