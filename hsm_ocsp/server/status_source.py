"""Where a CA's status comes from: its ``index.txt`` (IndexSource) or its CRLs
(CrlSource). The rest of the server sees one interface."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..config.model import CAConfig
from ..core.errors import IndexFormatError
from ..core.index import IndexSnapshot
from ..store.ledger import Ledger
from .crl_source import CrlSource
from .index_source import IndexSource

__all__ = ["StatusSource", "open_source"]


class StatusSource(Protocol):
    name: str
    snapshot: IndexSnapshot | None
    ledger: Ledger | None
    untaken: bool
    loading: bool
    last_error: str | None
    checked_at: float
    on_reload: Callable[[IndexSnapshot], None] | None
    on_error: Callable[[IndexFormatError], None] | None

    @property
    def path(self) -> Path | str: ...
    def check(self, *, force: bool = False) -> bool: ...
    def load(self) -> IndexSnapshot: ...
    def fresh(self, within: float, now: float | None = None) -> bool: ...
    def stale_for(self, now: float | None = None) -> float: ...
    def close(self) -> None: ...


def open_source(ca: CAConfig, ledger: Ledger | None = None) -> StatusSource:
    """The CA's source; a CRL's places start being fetched now."""
    if ca.crl is not None:
        return CrlSource(ca, ca.crl, ledger=ledger)
    return IndexSource(ca.name, ca.index, max_bytes=ca.max_index_bytes, ledger=ledger)
