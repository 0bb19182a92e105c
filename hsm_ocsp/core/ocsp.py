"""RFC 6960 messages as this package sees them: the OIDs, a decoded request, the
answer for one CertID. Decoding is in request.py (and request_full.py),
encoding in response.py: each CertID is echoed byte for byte, and every field is as
the RFCs and the Baseline Requirements want it.
"""

from __future__ import annotations

import dataclasses

from .model import CertStatus, Revocation

__all__ = [
    "HASH_ALGORITHMS",
    "KNOWN_REQUEST_EXTENSIONS",
    "MAX_NONCE",
    "OID_BASIC",
    "OID_EXTENDED_REVOKE",
    "OID_HOLD_INSTRUCTION",
    "OID_INVALIDITY_DATE",
    "OID_NONCE",
    "CertID",
    "OCSPRequest",
    "SingleResponse",
]

OID_NONCE = "1.3.6.1.5.5.7.48.1.2"
OID_EXTENDED_REVOKE = "1.3.6.1.5.5.7.48.1.9"
OID_BASIC = "1.3.6.1.5.5.7.48.1.1"
OID_INVALIDITY_DATE = "2.5.29.24"
OID_HOLD_INSTRUCTION = "2.5.29.23"
# Request extensions we know, so a critical one does not fail the request.
KNOWN_REQUEST_EXTENSIONS = {
    OID_NONCE,
    "1.3.6.1.5.5.7.48.1.4",  # acceptable responses
    "1.3.6.1.5.5.7.48.1.7",  # service locator
    "1.3.6.1.5.5.7.48.1.8",  # preferred signature algorithms
}
HASH_ALGORITHMS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
MAX_NONCE = 128


@dataclasses.dataclass(frozen=True, slots=True)
class CertID:
    """One CertID as the client sent it; ``der`` is echoed in the response."""

    hash_algorithm: str | None  # None: an algorithm we do not support
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: int
    der: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class OCSPRequest:
    cert_ids: tuple[CertID, ...]
    nonce: bytes | None  # the extnValue content: the DER of the Nonce OCTET STRING


@dataclasses.dataclass(frozen=True, slots=True)
class SingleResponse:
    cert_id: CertID
    status: CertStatus
    revocation: Revocation | None = None


# --- the fast path ---------------------------------------------------------
#
# Most requests have one shape: no version, requestor name, signature or
# per-CertID extension, CertIDs with one of four hash algorithms, and either no
# extensions or only a nonce, all in DER. This reader takes exactly that shape
# and answers None for anything else, which then goes to the full decoder
# below: it never rejects a request itself, so it cannot refuse what the full
# decoder accepts, and what it returns is what the full decoder would return
# (tests/test_fast_decode.py checks both over the fuzz cases).


# --- the full decoder ------------------------------------------------------
