"""What the answer store is true to, kept for a warm start (store/taken_indexes.py), and
how a start finds what it must withdraw: the serials on the lines of each index changed
since that version, or, where that cannot be said, the CA's records read whole."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from ..core.index import IndexSnapshot
from ..core.pre_production import untrue_keys
from ..store.fleet_store import FleetStore
from ..store.lmdb_store import LmdbStore
from ..store.taken_indexes import TakenIndexes
from .status_source import StatusSource

__all__ = ["KEEP_EVERY", "StartPlan", "StoreTruth"]

log = logging.getLogger("hsm_ocsp.producer")
KEEP_EVERY = 30.0  # seconds between two copies of a changing index


@dataclasses.dataclass
class StartPlan:
    changed: dict[str, list[int]]  # CA -> serials on the lines changed since its version
    whole: list[str]  # CAs whose records are read whole
    gone: list[str] | None  # CAs no longer served (None: not known: read the store whole)


class StoreTruth:
    def __init__(
        self,
        store: LmdbStore | FleetStore,
        sources: Mapping[str, StatusSource],
        taken: TakenIndexes,
    ) -> None:
        self.store, self.sources, self.taken = store, sources, taken
        self._copied: dict[str, tuple[IndexSnapshot | None, float]] = {}  # CA -> kept, when

    def reconcile(
        self,
        snapshots: Mapping[str, IndexSnapshot | None],
        withdraw: Callable[[str, list[int]], int],
        settled: Callable[[str], bool],
    ) -> int:
        """The start's withdrawals (``withdraw(ca, serials)``: records withdrawn), then
        each settled CA's version kept; records withdrawn in all."""
        plan = self.plan()
        deleted = sum(withdraw(ca, serials) for ca, serials in plan.changed.items())
        deleted += self.read_whole(plan, snapshots)
        self.started(settled)
        if plan.gone is None:
            how = "read whole"
        else:
            how = f"read whole for {', '.join(plan.whole)}" if plan.whole else "changed lines only"
        log.info(
            "answer store: %d records withdrawn that the indexes no longer say (%s)", deleted, how
        )
        return deleted

    def plan(self) -> StartPlan:
        """What a start must withdraw before anyone reads the store."""
        held = self.taken.held_cas()
        plan = StartPlan({}, [], None if held is None else sorted(held - set(self.sources)))
        for ca, source in self.sources.items():
            changed = self._changed_since(ca, source)
            if changed is None:
                plan.whole.append(ca)
            else:
                plan.changed[ca] = changed
        return plan

    def read_whole(self, plan: StartPlan, snapshots: Mapping[str, IndexSnapshot | None]) -> int:
        """Delete the records the plan says must be read whole and are untrue."""
        if plan.gone is None:
            return self.store.delete(untrue_keys(self.store.items(), snapshots))
        deleted = max(0, self.store.withdraw([ca.encode() + b"\0" for ca in plan.gone]))
        for ca in plan.whole:
            items = self.store.items(ca.encode() + b"\0")
            deleted += self.store.delete(untrue_keys(items, snapshots))
        return deleted

    def started(self, settled: Callable[[str], bool]) -> None:
        """The start's withdrawals done: the CAs served, and each settled CA's version."""
        self.taken.note_cas(list(self.sources))
        for ca in self.sources:
            if settled(ca):
                self.keep(ca, now=True)

    def keep(self, ca: str, *, now: bool = False) -> None:
        """Keep the index version the store is now true to (at most every KEEP_EVERY
        seconds: an older copy only makes a warm start withdraw a little more)."""
        source = self.sources.get(ca)
        copy_into = getattr(source, "copy_into", None)
        if source is None or copy_into is None:
            return
        kept, at = self._copied.get(ca, (None, 0.0))
        if kept is source.snapshot or (not now and time.monotonic() - at < KEEP_EVERY):
            return
        snapshot = source.snapshot
        if self.taken.write(ca, copy_into, snapshot):
            self._copied[ca] = (snapshot, time.monotonic())

    def forget(self, ca: str) -> None:
        """A withdrawal of ``ca`` could not commit: the store is no longer true to it."""
        self.taken.forget(ca)
        self._copied.pop(ca, None)

    def _changed_since(self, ca: str, source: StatusSource) -> list[int] | None:
        changed_since = getattr(source, "changed_since", None)
        path = self.taken.copy_path(ca)
        if changed_since is None or not path.is_file():
            return None
        changed: list[int] | None = changed_since(path)
        return changed
