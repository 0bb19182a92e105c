"""A signing host's answer store (alone, or in a fleet with Redis) and its audit trail,
as its configuration says."""

from __future__ import annotations

import weakref

from ..config.model import Config
from ..core.index import IndexSnapshot
from ..core.record_check import RecordChecker
from ..store.audit_log import AuditLog
from ..store.copy_memory import CopyMemory
from ..store.fleet_store import FleetStore, put_back
from ..store.lmdb_store import LmdbStore
from ..store.redis_fleet import Publisher, connect, fleet_view
from ..store.redis_follower import Follower
from .host_events import HostEvents
from .issuers import signer_keys
from .status_source import StatusSource

__all__ = ["open_audit", "open_store"]


class _Views:
    """Each CA's fleet view (redis_fleet.fleet_view), worked out once per index version."""

    def __init__(self, sources: dict[str, StatusSource]) -> None:
        self._sources = sources
        # Weakly: an index replaced by a reload must not stay in memory for this.
        self._known: dict[str, tuple[weakref.ref[IndexSnapshot], tuple[int, int] | None]] = {}

    def of(self, ca: str) -> tuple[int, int] | None:
        snapshot = self._sources[ca].snapshot
        if snapshot is None:
            return None
        known = self._known.get(ca)
        if known is None or known[0]() is not snapshot:
            known = self._known[ca] = (weakref.ref(snapshot), fleet_view(snapshot))
        return known[1]


def open_audit(config: Config) -> AuditLog | None:
    """The audit trail of signatures, if ``[audit] path`` is set."""
    audit = config.audit
    if audit.path is None:
        return None
    return AuditLog(audit.path, max_bytes=audit.max_bytes, keep=audit.keep, required=audit.required)


def open_store(
    config: Config, sources: dict[str, StatusSource], events: HostEvents
) -> LmdbStore | FleetStore | None:
    """The host's answer store; in a fleet, what it writes goes on to Redis too."""
    if config.server.state_dir is None:
        return None
    local = LmdbStore(config.server.state_dir, discard_damaged=True)
    if config.store.redis is None:
        return local
    names = [ca.name for ca in config.cas]
    publisher = Publisher(
        connect(config.store.redis),
        local,
        names,
        view=_Views(sources).of,
        leads_changed=events.leads_changed,
    )
    check, memory = RecordChecker(signer_keys(config)), CopyMemory(config.server.state_dir)
    follower = Follower(
        connect(config.store.redis),
        local,
        check,
        memory,
        skip=publisher.host,
        accept=events.accepts,
        refused=put_back(local, publisher),
    )
    return FleetStore(local, publisher, follower)
