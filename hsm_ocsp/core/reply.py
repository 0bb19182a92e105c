"""What the service answers with (Reply), and what it needs from outside: a Signer (the
token in production, a software key in the tests) and Events (metrics)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

from .model import RESPONSE_STATUS_NAMES, CertStatus, OCSPResponseStatus
from .reply_headers import ReplyHeaders
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

    A Reply never changes. What is worked out of it for each answer (its access-log
    fields and text, its HTTP headers) is worked out once and kept on the Reply itself,
    so that a Reply served again and again (from a cache or the store) costs nothing
    more, with no memo keyed on its identity. ``cached`` says only where it came from:
    a cache or the store (True), or a signature made for this request (False).
    """

    body: bytes
    status: OCSPResponseStatus
    ca: str | None = None
    cert_statuses: tuple[CertStatus, ...] = ()
    produced_at: dt.datetime | None = None
    next_update: dt.datetime | None = None
    etag: str | None = None
    cached: bool = False
    # For the access log: the RFC 6960 status name, the certificate statuses, and the
    # part of a text line that depends on the reply alone.
    status_name: str = dataclasses.field(init=False)
    cert_values: tuple[str, ...] = dataclasses.field(init=False)
    cert_text: str = dataclasses.field(init=False)
    log_text: str = dataclasses.field(init=False)
    _headers: ReplyHeaders | None = dataclasses.field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        values = tuple(s.value for s in self.cert_statuses)
        status_name = RESPONSE_STATUS_NAMES[self.status]
        cert_text = ",".join(values) or "-"
        text = f"ocsp={status_name} certs={cert_text} cached={'yes' if self.cached else 'no'}"
        object.__setattr__(self, "status_name", status_name)
        object.__setattr__(self, "cert_values", values)
        object.__setattr__(self, "cert_text", cert_text)
        object.__setattr__(self, "log_text", text)

    @property
    def successful(self) -> bool:
        return self.status is OCSPResponseStatus.SUCCESSFUL

    def headers(self) -> ReplyHeaders:
        """Its HTTP headers, worked out the first time they are asked for."""
        headers = self._headers
        if headers is None:
            headers = ReplyHeaders(self)
            object.__setattr__(self, "_headers", headers)
        return headers


UNSUCCESSFUL = {s: Reply(encode_unsuccessful(s), s) for s in OCSPResponseStatus if s != 0}
