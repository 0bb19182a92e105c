"""The front door of every serving process: a request decoded once, its CA chosen, and
then answered by the first of its answer sources that has an answer.

Answer sources: one interface, three kinds. The signing source (service.py: the index
and the token, in the producer or a lone worker), the store (store_source.py: the host's
LMDB, in a producer's worker or an edge's) and the link to the producer
(server/producer_link.py, in a worker). A worker asks the store, then the link, the way
Boulder's responder composes its sources.

Bad requests and CertIDs of CAs not served here are answered at once, asking no source.
A request seen before (the same bytes, for the same URL CA) is not decoded again: ~70 %
of a cached answer's CPU went to decoding it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from .errors import MalformedRequestError
from .limits import LIMITS
from .model import OCSPResponseStatus
from .ocsp import OCSPRequest
from .record_check import RecordChecker
from .reply import UNSUCCESSFUL, Reply
from .request import decode_request
from .responder import Issuer, select_issuer

__all__ = ["AnswerSource", "Front"]

log = logging.getLogger("hsm_ocsp.service")
# Requests up to this size are remembered (one CertID is ~80-120 bytes), so that memo
# holds at most memo_entries x (512 bytes and their decoded parts) however it is flooded.
MAX_KNOWN_REQUEST = 512


class AnswerSource(Protocol):
    async def answer(self, issuer: Issuer, request: OCSPRequest) -> Reply | None:
        """The answer to ``request`` (decoded, its CA chosen: ``issuer``), or None when
        this source has none to give: the next one is asked. Never raises for bad input
        or a part that is away (the answer is then tryLater)."""
        ...

    def replaced(self, issuers: Sequence[Issuer], check: RecordChecker | None) -> None:
        """A reload: new certificates or rules for the same CAs, and (a worker) the new
        checker of stored records; what was worked out under the old ones is dropped."""


class Front:
    def __init__(
        self,
        issuers: Sequence[Issuer],
        sources: Sequence[AnswerSource],
        *,
        max_cert_ids: int = LIMITS.max_cert_ids,
        memo_entries: int = LIMITS.front_memo_entries,
    ) -> None:
        """``sources``: asked in this order; the last should always answer (if none
        does, the answer is tryLater)."""
        self.issuers = tuple(issuers)
        self.issuer_names = frozenset(i.name for i in issuers)
        self.sources = tuple(sources)
        self.max_cert_ids = max_cert_ids
        self._entries = memo_entries
        # Exact request bytes (and the CA of the URL) -> the request decoded, its CA.
        self._known: dict[tuple[str | None, bytes], tuple[Issuer, OCSPRequest]] = {}

    async def respond(self, data: bytes, ca_name: str | None = None) -> Reply:
        """Answer one DER request; never raises for bad input or a source away."""
        known = self._known.get((ca_name, data))
        if known is None:
            decoded = self._decode(data, ca_name)
            if isinstance(decoded, Reply):
                return decoded
            if decoded[1].nonce is None and len(data) <= MAX_KNOWN_REQUEST:
                self._remember((ca_name, data), decoded)
            known = decoded
        issuer, request = known
        for source in self.sources:
            reply = await source.answer(issuer, request)
            if reply is not None:
                return reply
        return UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]

    def _decode(self, data: bytes, ca_name: str | None) -> Reply | tuple[Issuer, OCSPRequest]:
        """The request and its CA, or the answer now (malformed, or no CA of ours)."""
        try:
            request = decode_request(data, max_cert_ids=self.max_cert_ids)
        except MalformedRequestError as exc:
            log.debug("malformed request: %s", exc)
            return UNSUCCESSFUL[OCSPResponseStatus.MALFORMED_REQUEST]
        issuer = select_issuer(self.issuers, request.cert_ids, ca_name)
        if issuer is None:
            return UNSUCCESSFUL[OCSPResponseStatus.UNAUTHORIZED]
        return issuer, request

    def _remember(
        self, request: tuple[str | None, bytes], found: tuple[Issuer, OCSPRequest]
    ) -> None:
        known = self._known
        if len(known) >= self._entries:  # bounded: drop the oldest
            del known[next(iter(known))]
        known[request] = found

    def replace_issuers(
        self, issuers: Sequence[Issuer], check: RecordChecker | None = None
    ) -> None:
        """A reload: new certificates or rules for the same CAs; every source is told."""
        self.issuers = tuple(issuers)
        self.issuer_names = frozenset(i.name for i in issuers)
        self._known.clear()
        for source in self.sources:
            source.replaced(self.issuers, check)
