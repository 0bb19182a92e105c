"""From request bytes to response bytes: decode, status, cache, sign.

No HTTP here and no PKCS#11: the signer and the index snapshots come in from
outside, so the whole path is tested with a software signer too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .errors import HsmOcspError, MalformedRequestError
from .index import IndexSnapshot
from .model import NON_ISSUED, CertStatus, OCSPResponseStatus
from .ocsp import CertID
from .reply_cache import ENTRY_OVERHEAD, ReplyCache
from .request import decode_request
from .responder import Issuer, SigningCertificate, select_issuer, single_responses
from .response import (
    encode_basic_response,
    encode_response_data,
    encode_successful,
    encode_unsuccessful,
)
from .sign_queue import Busy, Kind, SignQueue

__all__ = ["Events", "OCSPService", "Reply", "Signer"]

log = logging.getLogger("hsm_ocsp.service")
_MISSING = object()
# Requests up to this size are remembered for the fast path (one CertID is ~80-120
# bytes), so that map holds at most cache_entries x 512 bytes however it is flooded.
_MAX_KNOWN_REQUEST = 512


class Signer(Protocol):
    """Signs ResponseData for a CA; raises HsmOcspError (TokenError) on failure."""

    def algorithm_identifier(self, name: str) -> bytes: ...

    async def sign(self, name: str, data: bytes) -> bytes: ...


class Events:
    """What the service reports as it works; metrics subclass it."""

    def cache_lookup(self, result: str) -> None:
        """``result`` is hit, miss or stale."""

    def signed(self, seconds: float) -> None:
        """A signature was made in ``seconds``."""

    def sign_failed(self) -> None:
        """A signature could not be made."""

    def signer_invalid(self, ca: str) -> None:
        """No answer was signed for ``ca``: no signing certificate of it is valid now."""

    def validity_capped(self, ca: str) -> None:
        """An answer's nextUpdate was cut to the signing certificate's notAfter."""

    def served_unrefreshed(self) -> None:
        """A cached answer past its refresh time (not its nextUpdate) was served
        because the refresh could not be signed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """An encoded OCSPResponse and what the HTTP layer needs to know of it."""

    body: bytes
    status: OCSPResponseStatus
    ca: str | None = None
    cert_statuses: tuple[CertStatus, ...] = ()
    produced_at: dt.datetime | None = None
    next_update: dt.datetime | None = None
    etag: str | None = None
    cached: bool = False

    @property
    def successful(self) -> bool:
        return self.status is OCSPResponseStatus.SUCCESSFUL


_UNSUCCESSFUL = {s: Reply(encode_unsuccessful(s), s) for s in OCSPResponseStatus if s != 0}


@dataclasses.dataclass(slots=True)
class _CacheEntry:
    reply: Reply
    refresh_at: dt.datetime
    snapshot: IndexSnapshot
    serials: tuple[int, ...]
    values: tuple[object, ...]


SHORT_VALIDITY = dt.timedelta(hours=16)
REFRESH_MARGIN = dt.timedelta(hours=8)
REFRESH_AT_MOST = dt.timedelta(days=4)


def refresh_time(this_update: dt.datetime, next_update: dt.datetime | None) -> dt.datetime:
    """When a cached answer is signed anew (RFC 9919 and CA/B BR 4.9.10).

    Under 16 hours of validity: at half of it. Otherwise at least 8 hours before
    nextUpdate, and no later than 4 days after thisUpdate.
    """
    assert next_update is not None
    validity = next_update - this_update
    if validity < SHORT_VALIDITY:
        return this_update + validity / 2
    return min(next_update - REFRESH_MARGIN, this_update + REFRESH_AT_MOST)


def _kind(cert_ids: Sequence[CertID], snapshot: IndexSnapshot) -> Kind:
    """Which line a signature for these CertIDs waits in (see sign_queue.py)."""
    if len(cert_ids) > 1:
        return Kind.MULTI
    return Kind.ISSUED if cert_ids[0].serial_number in snapshot.entries else Kind.UNKNOWN


def _utcnow() -> dt.datetime:
    """Now, to the second (every cached answer asks)."""
    return _utc_at(int(time.time()))


@functools.lru_cache(maxsize=1)
def _utc_at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class OCSPService:
    def __init__(
        self,
        issuers: Sequence[Issuer],
        snapshots: Callable[[str], IndexSnapshot | None],
        signer: Signer,
        *,
        max_cert_ids: int = 64,
        nonce: str = "echo",
        cache_entries: int = 100_000,
        cache_bytes: int = 64 << 20,
        max_pending_signatures: int = 256,
        events: Events | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.issuers = tuple(issuers)
        self.issuer_names = frozenset(i.name for i in issuers)
        self._snapshots = snapshots
        self._signer = signer
        self.max_cert_ids = max_cert_ids
        self.echo_nonce = nonce == "echo"
        self.cache_entries = cache_entries
        self.max_pending = max_pending_signatures
        self._queue = SignQueue(signer.sign, max_pending_signatures)
        self.events = events or Events()
        self._clock = clock
        self._cache_bytes = cache_bytes
        self._cache: ReplyCache[_CacheEntry] = ReplyCache(cache_entries, cache_bytes)
        self._inflight: dict[tuple[str, tuple[bytes, ...]], asyncio.Future[Reply]] = {}
        # Exact request bytes (and the CA of the URL) -> cache key, so a repeated
        # request skips decoding: ~70 % of a cached answer's CPU went to asn1crypto.
        # Only requests whose answer may come from the cache are remembered.
        self._known: dict[tuple[str | None, bytes], tuple[str, tuple[bytes, ...]]] = {}
        self._said: dict[tuple[str, str], float] = {}  # what was logged, and when

    async def respond(self, data: bytes, ca_name: str | None = None) -> Reply:
        """Answer one DER request; never raises for bad input or a failed token."""
        known = self._known.get((ca_name, data))
        if known is not None:
            hit = self._fresh(known)
            if hit is not None:
                return hit
        try:
            request = decode_request(data, max_cert_ids=self.max_cert_ids)
        except MalformedRequestError as exc:
            log.debug("malformed request: %s", exc)
            return _UNSUCCESSFUL[OCSPResponseStatus.MALFORMED_REQUEST]
        issuer = select_issuer(self.issuers, request.cert_ids, ca_name)
        if issuer is None:
            return _UNSUCCESSFUL[OCSPResponseStatus.UNAUTHORIZED]
        snapshot = self._snapshots(issuer.name)
        if snapshot is None:
            return _UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        nonce = request.nonce if self.echo_nonce else None
        if nonce is not None:
            return await self._sign(issuer, snapshot, request.cert_ids, nonce, Kind.NONCE)
        key = (issuer.name, tuple(c.der for c in request.cert_ids))
        if known is None and len(data) <= _MAX_KNOWN_REQUEST:
            self._remember((ca_name, data), key)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None:
            if entry.refresh_at > now and self._unchanged(entry, snapshot):
                self.events.cache_lookup("hit")
                return entry.reply
            self.events.cache_lookup("stale")
        else:
            self.events.cache_lookup("miss")
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            reply = await self._sign(
                issuer, snapshot, request.cert_ids, None, _kind(request.cert_ids, snapshot)
            )
            if reply.successful and issuer in self.issuers:  # not replaced by a reload meanwhile
                self._store(key, reply, issuer, snapshot, request.cert_ids)
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

    def _fresh(self, key: tuple[str, tuple[bytes, ...]]) -> Reply | None:
        """The cached reply for ``key`` if it is fresh and its serials unchanged."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        snapshot = self._snapshots(key[0])
        if snapshot is None or entry.refresh_at <= self._clock():
            return None
        if not self._unchanged(entry, snapshot):
            return None
        self.events.cache_lookup("hit")
        return entry.reply

    def _remember(
        self, request: tuple[str | None, bytes], key: tuple[str, tuple[bytes, ...]]
    ) -> None:
        known = self._known
        if len(known) >= self.cache_entries:  # bounded like the cache: drop the oldest
            del known[next(iter(known))]
        known[request] = key

    @staticmethod
    def _unchanged(entry: _CacheEntry, snapshot: IndexSnapshot) -> bool:
        if entry.snapshot is snapshot:
            return True
        entries = snapshot.entries
        for serial, value in zip(entry.serials, entry.values, strict=True):
            if entries.get(serial, _MISSING) != value:
                return False
        entry.snapshot = snapshot
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
            snapshot=snapshot,
            serials=serials,
            values=values,
        )
        size = len(reply.body) + sum(map(len, key[1])) + ENTRY_OVERHEAD
        # One CertID of a serial the CA issued: the answers a flood cannot push out.
        main = len(serials) == 1 and values[0] is not _MISSING
        self._cache.put(key, entry, size, main=main)

    async def _sign(
        self,
        issuer: Issuer,
        snapshot: IndexSnapshot,
        cert_ids: Sequence[CertID],
        nonce: bytes | None,
        kind: Kind,
    ) -> Reply:
        now = self._clock()
        signer = issuer.signer_at(now)
        if signer is None:  # never a signature no valid certificate vouches for
            self._signer_invalid(issuer, now)
            return _UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        next_update = now + issuer.validity
        if next_update > signer.not_after:  # no answer outlives its signer
            next_update = signer.not_after.replace(microsecond=0)
            self._validity_capped(issuer, signer)
        singles = single_responses(issuer, snapshot, cert_ids)
        tbs = encode_response_data(
            responder_key_hash=signer.responder_key_hash,
            produced_at=now,
            this_update=now,
            next_update=next_update,
            responses=singles,
            nonce=nonce,
            extended_revoke=any(s.revocation is NON_ISSUED for s in singles),
        )
        started = time.perf_counter()
        try:
            signature = await self._queue.sign(kind, signer.key, tbs)
        except Busy:
            self.events.sign_failed()
            return _UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        except HsmOcspError as exc:
            self.events.sign_failed()
            log.warning("cannot sign for CA %s: %s", issuer.name, exc)
            return _UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        self.events.signed(time.perf_counter() - started)
        body = encode_successful(
            encode_basic_response(
                tbs,
                self._signer.algorithm_identifier(signer.key),
                signature,
                () if signer.der is None else (signer.der,),
            )
        )
        return Reply(
            body=body,
            status=OCSPResponseStatus.SUCCESSFUL,
            ca=issuer.name,
            cert_statuses=tuple(s.status for s in singles),
            produced_at=now,
            next_update=next_update,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        )

    def _signer_invalid(self, issuer: Issuer, now: dt.datetime) -> None:
        self.events.signer_invalid(issuer.name)
        if now.timestamp() - self._said.get(("invalid", issuer.name), -1e9) < 60:
            return
        self._said["invalid", issuer.name] = now.timestamp()
        soonest = min(issuer.signers, key=lambda s: s.not_before)
        if all(now < s.not_before for s in issuer.signers):
            when = f"is not valid before {soonest.not_before:%Y-%m-%d %H:%M:%S} UTC"
        else:
            latest = max(s.not_after for s in issuer.signers)
            when = f"expired {latest:%Y-%m-%d %H:%M:%S} UTC"
        log.error("CA %s: the signing certificate %s: answering tryLater", issuer.name, when)

    def _validity_capped(self, issuer: Issuer, signer: SigningCertificate) -> None:
        self.events.validity_capped(issuer.name)
        if self._said.get(("capped", issuer.name)) != signer.not_after.timestamp():
            self._said["capped", issuer.name] = signer.not_after.timestamp()
            log.warning(
                "CA %s: nextUpdate cut to the signing certificate's notAfter %s UTC "
                "(less than the validity %s is left)",
                issuer.name,
                f"{signer.not_after:%Y-%m-%d %H:%M:%S}",
                issuer.validity,
            )

    def replace_issuers(self, issuers: Sequence[Issuer]) -> None:
        """New certificates or rules for the same CAs (a reload); the cached answers,
        signed under the old ones, are dropped."""
        self.issuers = tuple(issuers)
        self.issuer_names = frozenset(i.name for i in issuers)
        self._cache = ReplyCache(self.cache_entries, self._cache_bytes)
        self._known.clear()

    def cache_size(self) -> int:
        return len(self._cache)

    def cache_bytes(self) -> int:
        return self._cache.bytes
