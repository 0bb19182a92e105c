"""The pre-signed answers of one worker, bounded in entries and in bytes.

Two parts, each evicting its own oldest entries: one for answers to a single
CertID whose serial is in the index (nearly all real traffic), and a smaller
one for everything else (several CertIDs, serials the CA never issued). A
client can fill the second with random serials or long requests as fast as it
likes; it cannot push the first part's answers out.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["ENTRY_OVERHEAD", "ReplyCache"]

V = TypeVar("V")
# What an entry costs besides its answer and key bytes: the entry, its key
# tuple, the dict slot, the index values kept to notice a status change.
ENTRY_OVERHEAD = 512
# The share of entries and bytes the answers of the second part may hold.
OTHER_SHARE = 4  # one quarter


class _Part(Generic[V]):
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max(1, max_entries)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: collections.OrderedDict[Hashable, tuple[V, int]] = collections.OrderedDict()

    def put(self, key: Hashable, value: V, size: int) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self.items[key] = (value, size)
        self.bytes += size
        while self.items and (len(self.items) > self.max_entries or self.bytes > self.max_bytes):
            _, (_, dropped) = self.items.popitem(last=False)
            self.bytes -= dropped


class ReplyCache(Generic[V]):
    """Key -> value, oldest out first, within ``max_entries`` and ``max_bytes``."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        other_entries = max_entries // OTHER_SHARE
        other_bytes = max_bytes // OTHER_SHARE
        self._main: _Part[V] = _Part(max_entries - other_entries, max_bytes - other_bytes)
        self._other: _Part[V] = _Part(other_entries, other_bytes)

    def get(self, key: Hashable) -> V | None:
        found = self._main.items.get(key) or self._other.items.get(key)
        return None if found is None else found[0]

    def put(self, key: Hashable, value: V, size: int, *, main: bool) -> None:
        """Keep ``value`` (``size`` bytes) in the main part or the other part."""
        (self._main if main else self._other).put(key, value, size)
        (self._other if main else self._main).items.pop(key, None)

    def __len__(self) -> int:
        return len(self._main.items) + len(self._other.items)

    @property
    def bytes(self) -> int:
        return self._main.bytes + self._other.bytes
