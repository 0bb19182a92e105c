"""Where an answer comes from, as every serving process sees it: one interface, three
kinds. The signing source (service.py: the index and the token, in the producer or a
lone worker), the store (store_source.py: the host's LMDB, in a producer's worker or an
edge's) and the link to the producer (server/producer_link.py, in a worker). The front
door (front.py) decodes a request once and asks its sources in turn, the way Boulder's
responder composes its sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .ocsp import OCSPRequest
from .record_check import RecordChecker
from .reply import Reply
from .responder import Issuer

__all__ = ["AnswerSource"]


class AnswerSource(Protocol):
    async def answer(self, issuer: Issuer, request: OCSPRequest) -> Reply | None:
        """The answer to ``request`` (decoded, its CA chosen: ``issuer``), or None when
        this source has none to give: the next one is asked. Never raises for bad input
        or a part that is away (the answer is then tryLater)."""
        ...

    def replaced(self, issuers: Sequence[Issuer], check: RecordChecker | None) -> None:
        """A reload: new certificates or rules for the same CAs, and (a worker) the new
        checker of stored records; what was worked out under the old ones is dropped."""
