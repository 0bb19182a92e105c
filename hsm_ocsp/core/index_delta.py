"""A new version of an index read from its changed lines only.

``openssl ca -revoke`` rewrites the whole file to change one line; with a million
lines a full read takes over a second (more on a busy host), and a revocation waits
for it. The old version of the file is still at hand (the reader keeps it open: a
rename over it does not free it), so the two versions are compared at memcmp speed:
the lines before the first difference and after the last one are the same, and only
the lines between are parsed, in both versions. The entries of the old snapshot for
the old lines are replaced by the new lines' entries; everything else is shared.

Anything unusual (a bad line, a serial that appears twice, an old snapshot that does
not match the old file, a change of more than a quarter of the file) returns None:
the caller reads the whole file, which also names any bad line.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from .errors import IndexFormatError
from .index import IndexSnapshot, parse_index
from .model import Revocation

__all__ = ["Buffer", "changed_lines", "reread_changed"]

_STEP = 1 << 20  # bytes compared at once
_MISSING = object()


class Buffer(Protocol):
    """What is read of each version: bytes, or an mmap of the file."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice) -> bytes: ...
    def find(self, sub: bytes, start: int = ..., /) -> int: ...
    def rfind(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...


def _common_head(a: Buffer, b: Buffer, limit: int) -> int:
    """How many leading bytes ``a`` and ``b`` share (at most ``limit``)."""
    done = 0
    while done < limit:
        n = min(_STEP, limit - done)
        if a[done : done + n] != b[done : done + n]:
            low, high = done, done + n  # the same up to low; a difference before high
            while high - low > 1:
                middle = (low + high) // 2
                if a[low:middle] == b[low:middle]:
                    low = middle
                else:
                    high = middle
            return low
        done += n
    return limit


def _common_tail(a: Buffer, b: Buffer, limit: int) -> int:
    """How many trailing bytes ``a`` and ``b`` share (at most ``limit``)."""
    la, lb, done = len(a), len(b), 0
    while done < limit:
        n = min(_STEP, limit - done)
        if a[la - done - n : la - done] != b[lb - done - n : lb - done]:
            low, high = 0, n  # the last low bytes of the step are the same, not high
            while high - low > 1:
                middle = (low + high) // 2
                if a[la - done - middle : la - done] == b[lb - done - middle : lb - done]:
                    low = middle
                else:
                    high = middle
            return done + low
        done += n
    return limit


def changed_span(old: Buffer, new: Buffer) -> tuple[int, int, int]:
    """(start, old end, new end): the whole lines that differ, in each version."""
    shorter = min(len(old), len(new))
    head = _common_head(old, new, shorter)
    tail = _common_tail(old, new, shorter - head)
    start = old.rfind(b"\n", 0, head) + 1
    cut = old.find(b"\n", len(old) - tail)
    old_end = len(old) if cut < 0 else cut + 1
    return start, old_end, len(new) - (len(old) - old_end)


def reread_changed(
    old: Buffer, new: Buffer, base: IndexSnapshot, path: object = "index.txt"
) -> IndexSnapshot | None:
    """The snapshot of ``new``, given ``base``, the snapshot of ``old``; None when
    the whole file must be read instead."""
    start, old_end, new_end = changed_span(old, new)
    if max(old_end, new_end) - start > len(new) // 4 + 4096:
        return None  # most of the file changed: a full read costs as much
    try:
        before = parse_index(old[start:old_end], path)
        after = parse_index(new[start:new_end], path)
    except IndexFormatError:
        return None
    entries = _merged(base.entries, before.entries, after.entries)
    if entries is None:
        return None
    changed = [s for s, v in after.entries.items() if _differs(base.entries, s, v)]
    changed += [s for s in before.entries if s not in after.entries]
    counts = {
        k: base.counts.get(k, 0) - before.counts.get(k, 0) + after.counts.get(k, 0)
        for k in ("V", "R", "E")
    }
    return IndexSnapshot(
        entries=entries,
        counts=MappingProxyType(counts),
        delta=(weakref.ref(base), tuple(changed)),
    )


def changed_lines(old: Buffer, new: Buffer, path: object = "index.txt") -> list[int] | None:
    """The serials on the lines that differ between two versions (in either): a superset
    of the serials whose status changed. None when most of the file changed or a changed
    line does not parse."""
    if not len(new):
        return None
    start, old_end, new_end = changed_span(old, new)
    if max(old_end, new_end) - start > len(new) // 4 + 4096:
        return None
    try:
        before = parse_index(old[start:old_end], path)
        after = parse_index(new[start:new_end], path)
    except IndexFormatError:
        return None
    return sorted(set(before.entries) | set(after.entries))


def _differs(base: Mapping[int, Revocation | None], serial: int, value: object) -> bool:
    before = base.get(serial, _MISSING)
    return before is _MISSING or before != value


def _merged(
    base: Mapping[int, Revocation | None],
    before: Mapping[int, Revocation | None],
    after: Mapping[int, Revocation | None],
) -> dict[int, Revocation | None] | None:
    """``base`` with the lines ``before`` replaced by ``after``; None if ``base`` is
    not what the old lines say or a new serial is also on an unchanged line."""
    entries = dict(base)
    for serial, value in before.items():
        if entries.pop(serial, _MISSING) != value:
            return None
    for serial, value in after.items():
        if serial in entries:
            return None
        old = base.get(serial, _MISSING)
        entries[serial] = old if old is not _MISSING and old == value else value
    return entries
