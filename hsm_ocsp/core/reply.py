"""What the service answers with (Reply), and what it needs from outside: a Signer (the
token in production, a software key in the tests) and Events (metrics)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

from .model import RESPONSE_STATUS_NAMES, CertStatus, OCSPResponseStatus
from .response import (
    encode_unsuccessful,
)


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

    def signed_for(self, reason: str) -> None:
        """An answer was signed, for ``reason`` (pre_production.Reason's values)."""

    def sign_failed(self) -> None:
        """A signature could not be made."""

    def signer_invalid(self, ca: str) -> None:
        """No answer was signed for ``ca``: no signing certificate of it is valid now."""

    def validity_capped(self, ca: str) -> None:
        """An answer's nextUpdate was cut to the signing certificate's notAfter."""

    def from_store(self) -> None:
        """An answer was taken from the host's store (signed by another worker, or
        before a restart) instead of being signed."""

    def served_unrefreshed(self) -> None:
        """A cached answer past its refresh time (not its nextUpdate) was served
        because the refresh could not be signed."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Reply:
    """An encoded OCSPResponse and what the HTTP layer needs to know of it.

    A Reply never changes, and it is equal only to itself (``eq=False``: hashed by
    identity). A cached answer is one Reply served many times, so the server's
    memos (its HTTP headers in handlers.py, the per-turn counts in metrics.py) key
    on the Reply itself. Its log fields are worked out once, here.
    """

    body: bytes
    status: OCSPResponseStatus
    ca: str | None = None
    cert_statuses: tuple[CertStatus, ...] = ()
    produced_at: dt.datetime | None = None
    next_update: dt.datetime | None = None
    etag: str | None = None
    cached: bool = False
    # For the access log: the RFC 6960 status name, the certificate statuses.
    status_name: str = dataclasses.field(init=False)
    cert_values: tuple[str, ...] = dataclasses.field(init=False)
    cert_text: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        values = tuple(s.value for s in self.cert_statuses)
        object.__setattr__(self, "status_name", RESPONSE_STATUS_NAMES[self.status])
        object.__setattr__(self, "cert_values", values)
        object.__setattr__(self, "cert_text", ",".join(values) or "-")

    @property
    def successful(self) -> bool:
        return self.status is OCSPResponseStatus.SUCCESSFUL


UNSUCCESSFUL = {s: Reply(encode_unsuccessful(s), s) for s in OCSPResponseStatus if s != 0}
