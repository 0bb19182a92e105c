"""Who hears what a signing host's parts do, in what order: made first and given to the
constructors of the token, the status sources and the fleet store (no listener is
attached afterwards). Pre-production hears of an index change before the metrics do,
so that its changed serials are withdrawn before anything else acts on it."""

from __future__ import annotations

from collections.abc import Callable

from ..config.model import Config
from ..core.errors import IndexFormatError
from ..core.index import IndexSnapshot
from .metrics import Metrics
from .production import Production

__all__ = ["HostEvents"]


class _CaEvents:
    """One CA's source events (source_events.SourceEvents)."""

    def __init__(self, ca: str, metrics: Metrics, production: Callable[[], Production | None]):
        self._ca, self._metrics, self._production = ca, metrics, production
        self._reloaded = metrics.index_reloaded(ca)
        self._failed = metrics.index_failed(ca)
        self._refused = metrics.crl_refused(ca)

    def reloaded(self, snapshot: IndexSnapshot, crl_number: int | None) -> None:
        production = self._production()
        if production is not None:  # withdrawals first
            production.index_taken(self._ca, snapshot)
        self._metrics.crl_state(self._ca, crl_number, snapshot.valid_until)  # CRLs only
        self._reloaded(snapshot)

    def failed(self, error: IndexFormatError) -> None:
        self._failed(error)

    def refused(self, reason: str) -> None:
        self._refused(reason)


class HostEvents:
    """The token's events (pkcs11.token_state.TokenEvents), each CA's source events, and
    the fleet store's: to the metrics and to pre-production. ``production`` gives the
    host's Production once it is made (it needs the sources these events are given to)."""

    def __init__(
        self, config: Config, metrics: Metrics, production: Callable[[], Production | None]
    ) -> None:
        self._metrics = metrics
        self._production = production
        self._state = metrics.token_state([ca.name for ca in config.cas])
        self._cas = {ca.name: _CaEvents(ca.name, metrics, production) for ca in config.cas}

    def source(self, ca: str) -> _CaEvents:
        return self._cas[ca]

    # --- the token --------------------------------------------------------------

    def token_state(self, up: bool) -> None:
        self._state(up)

    def token_signed(self, seconds: float) -> None:
        self._metrics.token_signed(seconds)

    def token_recovered(self, sessions: int, retries: int) -> None:
        self._metrics.token_recovered(sessions, retries)

    # --- the fleet store --------------------------------------------------------

    def leads_changed(self) -> None:
        production = self._production()
        if production is not None:
            production.leads_changed()

    def accepts(self, key: bytes, value: bytes) -> bool:
        """Whether to copy a record another host published: only what this host's index
        says too (none before production is made: nothing is read before then)."""
        production = self._production()
        return production is not None and production.accepts(key, value)
