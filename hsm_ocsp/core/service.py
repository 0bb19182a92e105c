"""The signing source (front.py): status from the index, then the cached or
stored answer, else a signature. The producer answers its workers and its own
pre-production with it; a lone worker answers HTTP with it behind the front door.

No HTTP here and no PKCS#11: the signer and the index snapshots come in from
outside, so the whole path is tested with a software signer too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import weakref
from collections.abc import Callable, Sequence

from . import shared_answers
from .answer_signer import AnswerSigner
from .audit import Audit
from .clock import refresh_time, utcnow
from .front import Front
from .index import IndexSnapshot
from .limits import LIMITS
from .model import OCSPResponseStatus
from .ocsp import CertID, OCSPRequest
from .pre_production import Reason, produced_ahead
from .record_check import RecordChecker
from .reply import UNSUCCESSFUL, Events, Reply, Signer
from .reply_cache import ENTRY_OVERHEAD, ReplyCache
from .responder import Issuer, select_issuer
from .shared_answers import SharedAnswers, Sharer
from .sign_queue import Kind

__all__ = ["OCSPService"]

log = logging.getLogger("hsm_ocsp.service")
_MISSING = shared_answers.MISSING


@dataclasses.dataclass(slots=True)
class _CacheEntry:
    reply: Reply
    refresh_at: dt.datetime
    snapshot: weakref.ref[IndexSnapshot]  # weakly: an old index must not stay in memory
    serials: tuple[int, ...]
    values: tuple[object, ...]


def _kind(cert_ids: Sequence[CertID], snapshot: IndexSnapshot, reason: Reason | None) -> Kind:
    """Which line a signature for these CertIDs waits in (see sign_queue.py)."""
    if reason is not None:  # the producer signing ahead of any client
        return Kind.AHEAD
    if len(cert_ids) > 1:
        return Kind.MULTI
    return Kind.ISSUED if snapshot.listed(cert_ids[0].serial_number) else Kind.UNKNOWN


class OCSPService:
    def __init__(
        self,
        issuers: Sequence[Issuer],
        snapshots: Callable[[str], IndexSnapshot | None],
        signer: Signer,
        *,
        max_cert_ids: int = LIMITS.max_cert_ids,
        echo_nonce: bool = True,
        cache_entries: int = LIMITS.cache_entries,
        cache_bytes: int = LIMITS.cache_bytes,
        max_pending_signatures: int = LIMITS.max_pending_signatures,
        events: Events | None = None,
        shared: SharedAnswers | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        audit: Audit | None = None,
    ) -> None:
        self.issuers = tuple(issuers)
        self._snapshots = snapshots
        self.max_cert_ids = max_cert_ids
        self.echo_nonce = echo_nonce
        self.cache_entries = cache_entries
        self.max_pending = max_pending_signatures
        self.events = events or Events()
        self._shared = shared  # answers of every worker of the host (store/)
        self._sharer = None if shared is None else Sharer(shared, LIMITS.unknown_answers)
        self._clock = clock
        self._answers = AnswerSigner(signer, max_pending_signatures, self.events, clock, audit)
        self._cache_bytes = cache_bytes
        self._cache: ReplyCache[_CacheEntry] = ReplyCache(cache_entries, cache_bytes)
        self._inflight: dict[tuple[str, tuple[bytes, ...]], asyncio.Future[Reply]] = {}
        # A lone worker's front door, with this service its one source.
        self._front = Front(
            self.issuers,
            (self,),
            max_cert_ids=max_cert_ids,
            memo_entries=min(cache_entries, LIMITS.front_memo_entries),
        )

    async def respond(self, data: bytes, ca_name: str | None = None) -> Reply:
        """Answer one DER request (front.py, then ``answer``); never raises for bad input
        or a failed token."""
        return await self._front.respond(data, ca_name)

    async def answer(self, issuer: Issuer, request: OCSPRequest) -> Reply:
        """The answer to a decoded request for ``issuer`` (one of this service's)."""
        snapshot = self._snapshots(issuer.name)
        if snapshot is None:
            return UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        return await self._answer(issuer, snapshot, request)

    async def answer_for(self, ca: str, request: OCSPRequest) -> Reply:
        """Answer a request a worker decoded, for the CA it chose by name (the producer's
        link): nothing is decoded here."""
        issuer = select_issuer(self.issuers, request.cert_ids, ca)
        if issuer is None:  # a reload meanwhile: the CA is no longer served
            return UNSUCCESSFUL[OCSPResponseStatus.UNAUTHORIZED]
        return await self.answer(issuer, request)

    async def _answer(self, issuer: Issuer, snapshot: IndexSnapshot, request: OCSPRequest) -> Reply:
        if self.echo_nonce and request.nonce is not None:  # for this request alone
            return await self._answers.sign(
                issuer, snapshot, request.cert_ids, request.nonce, Kind.NONCE
            )
        return await self._kept_or_signed(issuer, snapshot, request.cert_ids)

    async def produce(self, ca: str, one: CertID, reason: Reason) -> Reply:
        """The producer's own answer for one CertID of CA ``ca``, signed for ``reason``
        unless a fresh one is cached or stored: no request bytes, no client counted."""
        issuer = next((i for i in self.issuers if i.name == ca), None)
        snapshot = self._snapshots(ca)
        if issuer is None or snapshot is None:  # a reload dropped it, or no index yet
            return UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        return await self._kept_or_signed(issuer, snapshot, (one,), reason)

    async def _kept_or_signed(
        self,
        issuer: Issuer,
        snapshot: IndexSnapshot,
        cert_ids: Sequence[CertID],
        reason: Reason | None = None,
    ) -> Reply:
        """The cached or stored answer if it may be served, else one signature (requests
        for the same answer meanwhile wait for it). ``reason``: the producer's own, whose
        look-ups are not counted as clients'."""
        key = (issuer.name, tuple(c.der for c in cert_ids))
        hit, entry = self._look_up(key, issuer, snapshot, cert_ids, count=reason is None)
        if hit is not None:
            return hit
        waiting = self._inflight.get(key)
        if waiting is not None:  # the same answer is being signed: wait for it
            return await asyncio.shield(waiting)
        return await self._sign_once(key, issuer, snapshot, cert_ids, entry, reason)

    def _look_up(
        self,
        key: tuple[str, tuple[bytes, ...]],
        issuer: Issuer,
        snapshot: IndexSnapshot,
        cert_ids: Sequence[CertID],
        count: bool = True,
    ) -> tuple[Reply | None, _CacheEntry | None]:
        """An answer that may be served now, from this worker's cache or else the host's
        store; and the entry to fall back on if a new signature cannot be made.
        ``count``: a client's look-up (hit, stale, miss), not the producer's own."""
        entry = self._cache.get(key)
        if (hit := self._still_good(entry, snapshot, count)) is not None:
            return hit, entry
        if self._shared is None or len(cert_ids) != 1:
            return None, entry
        shared = self._from_shared(key, issuer, snapshot, cert_ids[0])
        if shared is None:
            return None, entry
        return (shared.reply if shared.refresh_at > self._clock() else None), shared

    def _still_good(
        self, entry: _CacheEntry | None, snapshot: IndexSnapshot, count: bool = True
    ) -> Reply | None:
        """The cached answer if it answers now (each client's look-up counted: hit,
        stale, miss)."""
        if entry is None:
            result, found = "miss", None
        elif entry.refresh_at > self._clock() and self._unchanged(entry, snapshot):
            result, found = "hit", entry.reply
        else:
            result, found = "stale", None
        if count:
            self.events.cache_lookup(result)
        return found

    async def _sign_once(
        self,
        key: tuple[str, tuple[bytes, ...]],
        issuer: Issuer,
        snapshot: IndexSnapshot,
        cert_ids: Sequence[CertID],
        entry: _CacheEntry | None,
        reason: Reason | None = None,
    ) -> Reply:
        """Sign the answer for ``key``; requests for it meanwhile wait for this one.
        ``reason``: the producer's, for its own signatures."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            kind = _kind(cert_ids, snapshot, reason)
            reply = await self._answers.sign(issuer, snapshot, cert_ids, None, kind, reason)
            if reply.successful and issuer in self.issuers:  # not replaced by a reload meanwhile
                self._store(key, reply, issuer, snapshot, cert_ids)
            elif entry is not None:
                reply = self._unrefreshed(entry, issuer.name) or reply
            future.set_result(reply)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved when nobody else waits
            raise
        finally:
            del self._inflight[key]
        return reply

    def _unrefreshed(self, entry: _CacheEntry, ca: str) -> Reply | None:
        """A cached answer whose refresh could not be signed, if it may still be served:
        before its own nextUpdate, and only while the index says what it says. The index
        is asked now, not when the refresh began: a revocation that came in meanwhile
        must not be answered with the old status."""
        snapshot = self._snapshots(ca)
        next_update = entry.reply.next_update
        if snapshot is None or next_update is None or self._clock() >= next_update:
            return None
        if not self._unchanged(entry, snapshot):
            return None
        self.events.served_unrefreshed()
        return entry.reply

    @staticmethod
    def _unchanged(entry: _CacheEntry, snapshot: IndexSnapshot) -> bool:
        if entry.snapshot() is snapshot:
            return True
        entries = snapshot.entries
        for serial, value in zip(entry.serials, entry.values, strict=True):
            if entries.get(serial, _MISSING) != value:
                return False
        entry.snapshot = weakref.ref(snapshot)
        return True

    def _store(
        self,
        key: tuple[str, tuple[bytes, ...]],
        reply: Reply,
        issuer: Issuer,
        snapshot: IndexSnapshot,
        cert_ids: Sequence[CertID],
    ) -> None:
        assert reply.produced_at is not None
        serials = tuple(c.serial_number for c in cert_ids)
        values = tuple(snapshot.entries.get(s, _MISSING) for s in serials)
        entry = _CacheEntry(
            reply=dataclasses.replace(reply, cached=True),
            refresh_at=refresh_time(reply.produced_at, reply.next_update),
            snapshot=weakref.ref(snapshot),
            serials=serials,
            values=values,
        )
        size = len(reply.body) + sum(map(len, key[1])) + ENTRY_OVERHEAD
        # One CertID of a serial the CA issued: the answers a flood cannot push out.
        main = len(serials) == 1 and snapshot.listed(serials[0])
        self._cache.put(key, entry, size, main=main)
        signer = issuer.signer_at(reply.produced_at)
        if (  # a serial the index lists or lacks (not one a CRL CA answers good unlisted)
            len(serials) == 1
            and (main or values[0] is _MISSING)
            and self._sharer is not None
            and signer is not None
            and produced_ahead(issuer, cert_ids[0])
        ):  # to every worker of the host
            says = functools.partial(shared_answers.index_says, serial=serials[0], value=values[0])
            self._sharer.save(
                entry.reply,
                cert_ids[0],
                values[0],
                signer,
                entry.refresh_at,
                still_true=lambda: says(self._snapshots(issuer.name)),
            )

    def _from_shared(
        self,
        key: tuple[str, tuple[bytes, ...]],
        issuer: Issuer,
        snapshot: IndexSnapshot,
        cert_id: CertID,
    ) -> _CacheEntry | None:
        """The answer another worker (or this host before a restart) signed, if it may
        be served now; kept in this worker's cache as if signed here."""
        assert self._shared is not None
        now = self._clock()
        value = snapshot.entries.get(cert_id.serial_number, _MISSING)
        signer = issuer.signer_at(now)
        if value is _MISSING or signer is None:
            return None
        found = shared_answers.load(self._shared, issuer.name, cert_id, value, signer, now)
        if found is None:
            return None
        self.events.from_store()
        reply, at = found
        entry = _CacheEntry(reply, at, weakref.ref(snapshot), (cert_id.serial_number,), (value,))
        size = len(reply.body) + len(cert_id.der) + ENTRY_OVERHEAD
        self._cache.put(key, entry, size, main=True)
        return entry

    @property
    def issuer_names(self) -> frozenset[str]:
        return self._front.issuer_names

    def replace_issuers(
        self, issuers: Sequence[Issuer], check: RecordChecker | None = None
    ) -> None:
        """New certificates or rules for the same CAs (a reload): the front door's and
        this service's (``replaced``)."""
        self._front.replace_issuers(issuers, check)

    def replaced(self, issuers: Sequence[Issuer], check: RecordChecker | None) -> None:
        """The cached answers, signed under the old issuers, are dropped. (``check`` is
        a worker's: this service takes a stored answer only if it says what the index
        says.)"""
        self.issuers = tuple(issuers)
        self._cache = ReplyCache(self.cache_entries, self._cache_bytes)

    def cache_size(self) -> int:
        return len(self._cache)

    def cache_bytes(self) -> int:
        return self._cache.bytes
