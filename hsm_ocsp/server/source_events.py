"""Who hears what a CA's status source does, given to its constructor."""

from __future__ import annotations

from typing import Protocol

from ..core.errors import IndexFormatError
from ..core.index import IndexSnapshot

__all__ = ["SILENT", "SourceEvents"]


class SourceEvents(Protocol):
    def reloaded(self, snapshot: IndexSnapshot, crl_number: int | None) -> None:
        """A version was taken up (in the watcher's thread, before anyone else hears
        of it); ``crl_number``: of the full CRL in service, for a CA served from CRLs."""

    def failed(self, error: IndexFormatError) -> None:
        """A version was not taken (said once while it repeats)."""

    def refused(self, reason: str) -> None:
        """A CRL was refused, for ``reason`` (a metric label)."""


class _Silent:
    def reloaded(self, snapshot: IndexSnapshot, crl_number: int | None) -> None:
        pass

    def failed(self, error: IndexFormatError) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass


SILENT: SourceEvents = _Silent()
