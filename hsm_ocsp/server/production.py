"""The producer's work: keep a current signed answer in the host's store for every
serial of every index and every CertID hash of its CA (core/pre_production.py).

In order: the serials an index change touched (their stored answers are withdrawn
first, at the moment the new index is taken up, so no process serves the old status),
then answers due for refresh, then the fill. Clients' requests go to the service straight
and take their turn at the token with these (sign_queue.py); ``max_signatures_per_second``
caps what is signed here; a token that fails pauses the work, not retried in a spin.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterator

from ..config.model import Config
from ..core.clock import refresh_time, utcnow
from ..core.index import IndexSnapshot
from ..core.ocsp import CertID
from ..core.pre_production import (
    Reason,
    cert_id,
    changed_serials,
    due_keys,
    index_agrees,
    lifetime_of,
    needs,
    prefixes,
    untrue_keys,
)
from ..core.rate import Rate, Window
from ..core.request import decode_cert_id
from ..core.responder import Issuer
from ..core.service import OCSPService
from ..core.shared_answers import (
    cert_id_of,
    shared_key,
    signer_fingerprint,
)
from ..store.fleet_store import FleetStore
from ..store.lmdb_store import LmdbStore
from .metrics import Metrics
from .status_source import StatusSource
from .store_truth import StoreTruth

__all__ = ["Production"]

log = logging.getLogger("hsm_ocsp.producer")
_MISSING = object()
CHUNK = 512  # serials looked at between two looks at changes and refreshes
IN_FLIGHT = 8  # answers being signed here at once (keeps the token's window full)
REFILL_EVERY = 3600.0  # seconds between two fill passes once the store is full
PAUSE = 1.0  # seconds to wait after the token failed
RESCAN = 3600.0  # seconds between two looks for due refreshes at most (each reads the store)


class Production:
    def __init__(
        self,
        config: Config,
        service: OCSPService,
        sources: dict[str, StatusSource],
        store: LmdbStore | FleetStore,
        metrics: Metrics,
        clock: Callable[[], dt.datetime] = utcnow,
        leads: Callable[[str], bool] | None = None,
        truth: StoreTruth | None = None,
    ) -> None:
        """``truth``: the index versions the store is true to, kept for a warm start."""
        self.config = config
        self._truth = truth
        self._hash_names = {c.name: c.cert_id_hashes for c in config.cas}
        # In a fleet: whether this host holds the CA's lease (else another host
        # pre-produces it into Redis, and this one signs only what clients ask).
        self._leads = leads or (lambda ca: True)
        self.service = service
        self.sources = sources
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self._last: dict[str, IndexSnapshot | None] = dict.fromkeys(sources)
        self._changed: dict[str, collections.deque[int]] = {n: collections.deque() for n in sources}
        self._changed_at: dict[str, float] = {}
        # Key prefixes whose withdrawal has not committed (written in the watchers' threads).
        self._unwithdrawn: dict[str, list[bytes]] = {n: [] for n in sources}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        rate = config.producer.max_signatures_per_second
        self._rate = Rate(rate)  # paced: one in flight a 10/s, so a change waits behind one
        # Two in flight a session (each has the next waiting while it signs: a network
        # HSM's latency hidden); IN_FLIGHT while they are quick (the way to the signers).
        low, high = 2 * config.token.sessions, max(IN_FLIGHT, 2 * config.token.sessions)
        if rate:
            low = high = max(1, min(high, int(rate) // 10))
        self._slots = Window(low, high)
        self._tasks: set[asyncio.Task[bool]] = set()
        self._failed = False
        self._refill = True  # a fill pass is due (at start, after a reload)
        self.soonest: dict[str, float] = {}  # CA -> the soonest nextUpdate stored (Unix s)
        self._rest: dict[str, float] = {}  # CA -> the same, of the records not due
        self._refresh_at = 0.0  # Unix time the next stored answer is due for refresh
        self.complete: dict[str, bool] = {}  # CA -> its last fill pass signed all it lacked
        self._failures: dict[str, int] = dict.fromkeys(sources, 0)
        # The store is read for due answers at least this often: a quarter of the
        # shortest validity, so an answer is refreshed before its nextUpdate whatever
        # the validity (its refresh time is noted as it is signed, too).
        shortest = min((ca.validity.total_seconds() for ca in config.cas), default=RESCAN * 4)
        self._rescan = max(1.0, min(RESCAN, shortest / 4))

    # --- withdrawals: called in the index watcher's thread --------------------------

    def index_taken(self, ca: str, snapshot: IndexSnapshot) -> None:
        """A version of the index of ``ca`` is taken up: its changed serials are withdrawn
        now, before anything else hears of it (the host's events call this first)."""
        old, self._last[ca] = self._last[ca], snapshot
        changed = sorted(changed_serials(old, snapshot))
        if changed:
            self._unwithdrawn[ca].extend(prefixes(ca, changed))
            withdrawn = self._withdraw(ca)
            if isinstance(self.store, FleetStore):  # another host may have signed them
                self.store.follower.refetch(prefixes(ca, changed))
            log.info(
                "CA %s: %d serials changed in the index, %s stored answers withdrawn",
                ca,
                len(changed),
                "no" if withdrawn < 0 else withdrawn,
            )
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._queue_changes, ca, changed)
        if old is not None and old.valid_until != snapshot.valid_until and self._loop:
            # A newer CRL: answers capped by the old one's nextUpdate are made again.
            self._loop.call_soon_threadsafe(self.replaced_issuers)

    def _withdraw(self, ca: str) -> int:
        """Withdraw what is waiting for ``ca``; -1 if the store could not commit it, and
        it waits for the next try (``settle``). Never dropped: an answer left in the store
        would tell the old status to every worker."""
        waiting = self._unwithdrawn[ca]
        if not waiting:
            return 0
        taken = list(waiting)
        withdrawn = self.store.withdraw(taken)
        if withdrawn >= 0:  # only what was withdrawn: one queued meanwhile stays
            del waiting[: len(taken)]
        elif self._truth is not None:  # the store is no longer true to the version kept
            self._truth.forget(ca)
        return withdrawn

    def settle(self, ca: str) -> bool:
        """Try again the withdrawals of ``ca`` that did not commit (the watcher's thread,
        once a tick); True once none is left: its stored answers may be vouched for."""
        if self._unwithdrawn[ca] and self._withdraw(ca) >= 0:
            log.info("CA %s: the withdrawals that had failed are committed", ca)
        return not self._unwithdrawn[ca]

    def keep_version(self, ca: str) -> None:
        """Keep the version the store is true to; after the tick's vouch (a copy takes time)."""
        if self._truth is not None and not self._unwithdrawn[ca]:
            self._truth.keep(ca)

    def unwithdrawn(self, ca: str) -> int:
        """Serials of ``ca`` whose withdrawal has not committed yet."""
        return len(self._unwithdrawn[ca])

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if isinstance(self.store, FleetStore):
            self.store.start()

    def accepts(self, key: bytes, value: bytes) -> bool:
        """Whether a record another host published says what this host's index says."""
        return index_agrees(key, value, {n: s.snapshot for n, s in self.sources.items()})

    def leads_changed(self) -> None:
        """A lease won or lost (the publisher's thread): fill what is ours now."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.replaced_issuers)

    def _queue_changes(self, ca: str, serials: list[int]) -> None:
        self._changed[ca].extend(serials)
        self._changed_at.setdefault(ca, time.monotonic())
        self._wake.set()

    def reconcile(self) -> int:
        """Delete what the store holds that the indexes no longer say (a restart after
        the index changed, say) or that is no answer of a CA served here, before anyone
        reads it (server/store_truth.py says how little can be read). Blocking."""
        snapshots = {name: source.snapshot for name, source in self.sources.items()}
        self._last.update(snapshots)
        if self._truth is None:
            deleted = self.store.delete(untrue_keys(self.store.items(), snapshots))
            log.info(
                "answer store: %d records withdrawn that the indexes no longer say (read whole)",
                deleted,
            )
            return deleted
        return self._truth.reconcile(
            snapshots, self._withdraw_serials, lambda ca: not self._unwithdrawn[ca]
        )

    def _withdraw_serials(self, ca: str, serials: list[int]) -> int:
        self._unwithdrawn[ca].extend(prefixes(ca, serials))
        return max(0, self._withdraw(ca))

    def replaced_issuers(self) -> None:
        """A reload: answers of a replaced certificate or key are produced again."""
        self._refill = True
        self._refresh_at = 0.0  # another validity: look at every record's time again
        self._wake.set()

    # --- the work: on the event loop -------------------------------------------------

    async def run(self) -> None:
        next_fill = 0.0
        while True:
            self._wake.clear()  # before the work: a wake during it is not lost
            await self._changes()
            if time.time() >= self._refresh_at:
                await self._refreshes()
            if self._refill or time.monotonic() >= next_fill:
                self._refill = False
                await self._fill()
                next_fill = time.monotonic() + REFILL_EVERY
            self._backlog()
            wait = max(1.0, min(self._refresh_at - time.time(), 60.0))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _issuer(self, ca: str) -> Issuer | None:
        """The CA's issuer, if this host produces for it (in a fleet: holds its lease) now:
        not while its CRLs are past their nextUpdate (an answer would claim a freshness
        they do not have; a newer CRL taken up brings the production back)."""
        until = self._until(ca)
        if not self._leads(ca) or (until is not None and until <= self._clock().timestamp()):
            return None
        return next((i for i in self.service.issuers if i.name == ca), None)

    def _until(self, ca: str) -> float | None:
        """Unix time the CA's status stops being true (its CRLs' nextUpdate), if it does."""
        until = getattr(getattr(self.sources.get(ca), "snapshot", None), "valid_until", None)
        return None if until is None else float(until.timestamp())

    async def _changes(self) -> None:
        for ca, queue in self._changed.items():
            issuer = self._issuer(ca)
            hashes = self._hash_names.get(ca, ())
            if issuer is None and not self._leads(ca):  # another host produces it (its lease)
                queue.clear()
            while queue and issuer is not None:
                serial = queue.popleft()
                for algorithm in hashes:  # a form that fails puts the serial back (_done)
                    await self._produce(
                        issuer, cert_id(issuer, algorithm, serial), Reason.CHANGE, serial
                    )
            await self._drain()
            started = self._changed_at.pop(ca, None)
            if started is not None:
                self.metrics.production_lag.labels(ca).set(time.monotonic() - started)

    async def _refreshes(self) -> None:
        """Sign again what is due: every stored record past its refresh time."""
        now = time.time()
        self._refresh_at = now + self._rescan  # or the soonest refresh time, found on the way
        for ca in self.sources:
            issuer = self._issuer(ca)
            if issuer is None:
                continue
            due = await asyncio.to_thread(self._due, ca, now)  # reads the whole store
            failures = self._failures[ca]
            for one in filter(None, (decode_cert_id(cert_id_of(key)) for key in due)):
                await self._produce(issuer, one, Reason.REFRESH)
                if self._changed[ca]:
                    await self._changes()
            await self._drain()
            if due and self._failures[ca] == failures:  # all refreshed: the rest is soonest
                self.soonest[ca] = self._rest[ca]
            if due and self._failed:  # not refreshed: look again soon
                self._refresh_at = min(self._refresh_at, now + 10.0)

    def _due(self, ca: str, now: float) -> list[bytes]:
        """Keys of ``ca``'s records due now; the soonest nextUpdate and refresh noted."""
        until = self._until(ca)
        items = self.store.items(ca.encode() + b"\0")
        due, self.soonest[ca], refresh_at, self._rest[ca] = due_keys(items, now, until)
        self._refresh_at = min(self._refresh_at, refresh_at)
        return due

    async def _fill(self) -> None:
        """Produce what the store lacks (or holds of a replaced signer), in chunks; a CA
        whose pass signed all it lacked is ``complete``. Each chunk yields the loop."""
        for ca, source in self.sources.items():
            issuer = self._issuer(ca)
            failures = self._failures[ca]
            serials = list(source.snapshot.entries) if issuer and source.snapshot else []
            for start in range(0, len(serials), CHUNK):
                chunk, snapshot = serials[start : start + CHUNK], source.snapshot  # the newest
                assert issuer is not None and snapshot is not None
                for one, reason in self._wanted(ca, issuer, snapshot, chunk):
                    await self._produce(issuer, one, reason)
                    await self._first_things_first()
                await asyncio.sleep(0)  # a full store's pass must not hold the loop for seconds
            await self._drain()
            self.complete[ca] = bool(serials) and self._failures[ca] == failures

    async def _first_things_first(self) -> None:
        """Between two signatures of the fill: a change, then a due refresh, go first."""
        if any(self._changed.values()):
            await self._changes()
        if time.time() >= self._refresh_at:
            await self._refreshes()

    def _wanted(
        self, ca: str, issuer: Issuer, snapshot: IndexSnapshot, serials: list[int]
    ) -> Iterator[tuple[CertID, Reason]]:
        now = self._clock()
        signer = issuer.signer_at(now)
        if signer is None:
            return
        fingerprint = signer_fingerprint(signer)
        lifetime = lifetime_of(issuer.validity, signer.not_after, snapshot)
        for serial in serials:
            value = snapshot.entries.get(serial, _MISSING)
            for algorithm in self._hash_names.get(ca, ()) if value is not _MISSING else ():
                one = cert_id(issuer, algorithm, serial)
                data = self.store.get(shared_key(ca, one))
                if (reason := needs(data, value, fingerprint, now, lifetime)) is not None:
                    yield one, reason

    async def _produce(
        self, issuer: Issuer, one: CertID, reason: Reason, serial: int | None = None
    ) -> None:
        """Start signing one answer (a window of them at once, at the configured rate).
        ``serial``: a change's, queued again if its answer cannot be signed now (the
        token away): a change leaves the queue only once every form of it is signed."""
        while any(source.loading for source in self.sources.values()):
            await asyncio.sleep(PAUSE / 20)  # an index is being read: it goes first
        await self._slots.acquire()
        while self._failed:  # the token failed: wait for it, one try a second
            self._failed = False
            await asyncio.sleep(PAUSE)
        await self._rate.wait()
        task = asyncio.create_task(self._sign(issuer.name, one, reason))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, issuer.name, serial))

    async def _sign(self, ca: str, one: CertID, reason: Reason) -> bool:
        started = time.monotonic()
        reply = await self.service.produce(ca, one, reason)
        self._slots.took(time.monotonic() - started)
        if reply.successful and reply.produced_at is not None:  # its refresh is looked for
            due = refresh_time(reply.produced_at, reply.next_update).timestamp()
            self._refresh_at = min(self._refresh_at, due)
        return reply.successful

    def _done(self, ca: str, serial: int | None, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if task.cancelled() or task.exception() is not None or not task.result():
            self._failed = True
            self._failures[ca] += 1
            if serial is not None and serial not in self._changed[ca]:
                self._changed[ca].append(serial)  # produced when the token is back
                self._changed_at.setdefault(ca, time.monotonic())
                self._wake.set()  # tried again in a second (_produce), not at the next tick

    async def _drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def report(self) -> None:
        """The backlog, the store's size and its soonest nextUpdate, as metrics (also
        while a fill runs)."""
        self._backlog()
        for ca, soonest in self.soonest.items():
            if soonest != float("inf"):
                self.metrics.store_soonest_next_update.labels(ca).set(soonest)

    def _backlog(self) -> None:
        for ca, queue in self._changed.items():
            self.metrics.production_backlog.labels(ca).set(len(queue))
        self.metrics.store_records.set(self.store.entries())

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
