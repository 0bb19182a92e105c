"""Where a CA's status comes from: its ``index.txt`` (IndexSource) or its CRLs
(CrlSource). The rest of the server sees one interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..config.model import CAConfig
from ..core.index import IndexSnapshot
from ..store.ledger import Ledger
from .crl_source import CrlSource
from .index_source import IndexSource
from .source_events import SourceEvents

__all__ = ["SourceEvents", "StatusSource", "open_source"]


class StatusSource(Protocol):
    name: str
    snapshot: IndexSnapshot | None
    ledger: Ledger | None
    untaken: bool
    loading: bool
    last_error: str | None
    checked_at: float

    @property
    def path(self) -> Path | str: ...
    def check(self, *, force: bool = False) -> bool: ...
    def load(self) -> IndexSnapshot: ...
    def fresh(self, within: float, now: float | None = None) -> bool: ...
    def stale_for(self, now: float | None = None) -> float: ...
    def close(self) -> None: ...


def open_source(
    ca: CAConfig,
    ledger: Ledger | None = None,
    state_dir: Path | None = None,
    events: SourceEvents | None = None,
) -> StatusSource:
    """The CA's source. CRLs taken are kept in ``state_dir``/crls for the next start."""
    if ca.crl is not None:
        keep_in = None if state_dir is None else state_dir / "crls"
        return CrlSource(ca, ca.crl, ledger=ledger, keep_in=keep_in, events=events)
    return IndexSource(
        ca.name, ca.index, max_bytes=ca.max_index_bytes, ledger=ledger, events=events
    )
