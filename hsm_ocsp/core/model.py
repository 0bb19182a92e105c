"""Values the protocol core works with: statuses, reasons, revocations."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

__all__ = [
    "RESPONSE_STATUS_NAMES",
    "CertStatus",
    "OCSPResponseStatus",
    "Revocation",
    "RevocationReason",
]


class OCSPResponseStatus(enum.IntEnum):
    """RFC 6960 4.2.1 OCSPResponseStatus; 4 is not used."""

    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class RevocationReason(enum.IntEnum):
    """RFC 5280 CRLReason; 7 is not used."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Revocation:
    """What the index records of one revoked certificate."""

    revocation_time: dt.datetime
    reason: RevocationReason | None = None
    invalidity_date: dt.datetime | None = None
    hold_instruction: str | None = None  # dotted OID


# RFC 6960 2.2: a "revoked" answer for a certificate that was never issued.
NON_ISSUED = Revocation(
    revocation_time=dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    reason=RevocationReason.CERTIFICATE_HOLD,
)


# The RFC 6960 names, as metrics and logs show them.
RESPONSE_STATUS_NAMES = {
    OCSPResponseStatus.SUCCESSFUL: "successful",
    OCSPResponseStatus.MALFORMED_REQUEST: "malformedRequest",
    OCSPResponseStatus.INTERNAL_ERROR: "internalError",
    OCSPResponseStatus.TRY_LATER: "tryLater",
    OCSPResponseStatus.SIG_REQUIRED: "sigRequired",
    OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
}
