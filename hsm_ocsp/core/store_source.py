"""The host's store as an answer source (front.py), in a producer's worker or an
edge's: no token and no index here.

An answer for one CertID is read from the host's store (shared_answers.py), served until
its nextUpdate if one of the CA's configured certificates valid now signed it. Anything
else (a serial the store lacks, a nonce, several CertIDs) is not its to answer: the next
source (the link to the producer) is asked.

The producer withdraws a serial's records before it signs anew when the index changes
its status: so a worker never needs the index to know that a stored answer is true.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Sequence

from .clock import utcnow
from .limits import LIMITS
from .ocsp import OCSPRequest
from .record_check import RecordChecker
from .reply import Events, Reply
from .reply_cache import ENTRY_OVERHEAD, ReplyCache
from .responder import Issuer, SigningCertificate
from .shared_answers import (
    SharedAnswers,
    StoredAnswer,
    decode,
    keyable,
    shared_key,
    signer_fingerprint,
)

__all__ = ["StoreSource"]

RECHECK = 1.0  # seconds an answer past its refresh time is served before the store is read


@dataclasses.dataclass(slots=True)
class _Memo:
    """A record read from the store, and the Reply made of it. It is served without
    reading the store while the store's generation stays (no withdrawal since) and
    before ``recheck``: the record's refresh time, when a fresher one is due."""

    digest: bytes  # of the record: the same record is not checked again
    reply: Reply
    next_update: float
    signer: bytes
    recheck: float
    generation: int


class StoreSource:
    def __init__(
        self,
        shared: SharedAnswers,
        *,
        echo_nonce: bool = True,
        cache_entries: int = LIMITS.front_memo_entries,
        cache_bytes: int = LIMITS.front_memo_bytes,
        events: Events | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        vouched: Callable[[str], bool] | None = None,
        check: RecordChecker | None = None,
    ) -> None:
        """``vouched(ca)``: whether the producer has lately said that the store holds
        what the CA's index says (store/vouch.py); while it has not, no answer of the
        CA comes from here. None (an edge, which has no index): always.
        ``echo_nonce``: a request with a nonce is not the store's to answer (an edge,
        which cannot sign, answers it from the store without the nonce)."""
        self._vouched = vouched
        self.check = check  # a record is served only if its signed body says what it says
        self._shared = shared
        self.echo_nonce = echo_nonce
        self.events = events or Events()
        self._clock = clock
        self._entries = cache_entries
        self._bytes = cache_bytes
        self._memo: ReplyCache[_Memo] = ReplyCache(cache_entries, cache_bytes)
        # A CertID's DER (which names its CA by the hashes) -> its store key.
        self._keys: dict[bytes, bytes] = {}
        self._fingerprints: dict[int, tuple[SigningCertificate, bytes]] = {}
        self._valid: dict[str, tuple[Issuer, int, frozenset[bytes]]] = {}

    async def answer(self, issuer: Issuer, request: OCSPRequest) -> Reply | None:
        if (self.echo_nonce and request.nonce is not None) or len(request.cert_ids) != 1:
            return None
        one = request.cert_ids[0]
        key = self._keys.get(one.der)
        if key is None:
            if not keyable(one.serial_number):  # in no index: never stored
                return None
            if len(self._keys) >= self._entries:
                self._keys.clear()
            key = self._keys[one.der] = shared_key(issuer.name, one)
        return self._stored(issuer, key)

    def _stored(self, issuer: Issuer, key: bytes) -> Reply | None:
        """The stored answer under ``key`` if it may be served now. Only a hit is
        counted here: the producer counts what it is asked (miss, stale or its hit).

        The store is read only when it may say something new: a transaction a request
        made every worker write the store's shared reader table (~10 % of a cached
        answer's throughput with 2 workers, benchmarks/run.py)."""
        if self._vouched is not None and not self._vouched(issuer.name):
            return None  # the producer cannot say the store is true: ask it
        now = self._clock().timestamp()
        generation = self._shared.generation()  # before the read: a withdrawal after it
        memo = self._memo.get(key)  # changes the number, and the next request reads anew
        signing = self._signing(issuer, now)
        if (
            memo is None
            or memo.generation != generation
            or now >= memo.recheck
            or memo.signer not in signing  # a rollover: the store may hold a newer one
        ):
            memo = self._reread(issuer, key, memo, generation, now)
        if memo is None or now >= memo.next_update or memo.signer not in signing:
            return None
        self.events.cache_lookup("hit")
        return memo.reply

    def _reread(
        self, issuer: Issuer, key: bytes, memo: _Memo | None, generation: int, now: float
    ) -> _Memo | None:
        data = self._shared.get(key)
        if data is None:
            return None
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if memo is not None and memo.digest == digest:  # the same record: not refreshed yet
            memo.generation, memo.recheck = generation, min(memo.next_update, now + RECHECK)
            return memo
        record = self._record(key, data)
        if record is None:
            return None
        recheck = record.refresh_at if record.refresh_at > now else now + RECHECK
        reply = record.reply(issuer.name)
        memo = _Memo(
            digest,
            reply,
            record.next_update,
            record.signer,
            min(recheck, record.next_update),
            generation,
        )
        self._memo.put(key, memo, len(reply.body) + len(key) + ENTRY_OVERHEAD, main=True)
        return memo

    def _signing(self, issuer: Issuer, now: float) -> frozenset[bytes]:
        """Fingerprints of ``issuer``'s certificates valid now (worked out once a second).
        Which of them signs is the producer's choice (it may take up a reload a moment
        before or after this worker); an answer of a certificate no longer configured is
        never served."""
        second = int(now)
        known = self._valid.get(issuer.name)
        if known is None or known[0] is not issuer or known[1] != second:
            at = dt.datetime.fromtimestamp(now, dt.UTC)
            valid = frozenset(
                self._fingerprint(s) for s in issuer.signers if s.not_before <= at < s.not_after
            )
            known = self._valid[issuer.name] = (issuer, second, valid)
        return known[2]

    def _fingerprint(self, signer: SigningCertificate) -> bytes:
        known = self._fingerprints.get(id(signer))
        if known is None or known[0] is not signer:
            if len(self._fingerprints) > 64:
                self._fingerprints.clear()
            known = self._fingerprints[id(signer)] = (signer, signer_fingerprint(signer))
        return known[1]

    def _record(self, key: bytes, data: bytes) -> StoredAnswer | None:
        """The record, checked against its signed body when a checker was given: a record
        that is not what it claims (damage, bytes put there) is never served."""
        if self.check is None:
            return decode(data)
        checked = self.check.check(key, data)
        return None if checked is None else checked.record

    def replaced(self, issuers: Sequence[Issuer], check: RecordChecker | None) -> None:
        if check is not None:
            self.check = check
        self._memo = ReplyCache(self._entries, self._bytes)
        self._keys.clear()  # a CA may have another name now

    def cache_size(self) -> int:
        return len(self._memo)

    def cache_bytes(self) -> int:
        return self._memo.bytes
