"""A stored record checked before it is served or copied.

A record's header (status, times, signer) is not signed: anyone who can write the store
or the fleet's Redis could put an old answer back, or bytes that are no answer at all.
So a record is taken only if its body is an OCSP response signed by a certificate that
signs for its CA (the one the header names), for exactly the CertID of its key, and
saying what the header says (status, producedAt, nextUpdate). What the header says can
then be trusted by the rules that keep an edge from going back (redis_follower.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import ocsp

from .model import CertStatus
from .ocsp import CertID
from .request import decode_cert_id
from .shared_answers import StoredAnswer, cert_id_of, decode, parse_key
from .signing import SignatureScheme, verify

__all__ = ["MAX_KEY", "MAX_RECORD", "Checked", "RecordChecker", "SignerKeys"]

MAX_KEY = 1024  # bytes of a store key: a CA name, a serial and a CertID
MAX_RECORD = 16 * 1024  # bytes of a record: an answer with a responder certificate

# Per CA: the fingerprint of each certificate that signs for it -> its key and scheme.
SignerKeys = Mapping[str, Mapping[bytes, tuple[object, SignatureScheme]]]

_STATUSES = {
    ocsp.OCSPCertStatus.GOOD: CertStatus.GOOD,
    ocsp.OCSPCertStatus.REVOKED: CertStatus.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: CertStatus.UNKNOWN,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    """A record that passed: its header is what its signed body says."""

    ca: str
    serial: int
    record: StoredAnswer
    hold: bool  # revoked with reason certificateHold (which may be released)


class RecordChecker:
    def __init__(self, keys: SignerKeys) -> None:
        self.keys = keys

    def check(self, key: bytes, data: bytes) -> Checked | None:
        """The record under ``key`` if it is what it says; None for anything else."""
        if len(key) > MAX_KEY or len(data) > MAX_RECORD:
            return None
        parsed, record = parse_key(key), decode(data)
        if parsed is None or record is None:
            return None
        signer = self.keys.get(parsed[0], {}).get(record.signer)
        cert_id = decode_cert_id(cert_id_of(key))
        if signer is None or cert_id is None or cert_id.serial_number != parsed[1]:
            return None
        single = _signed_single(record, cert_id, signer)
        if single is None:
            return None
        hold = single.revocation_reason is x509.ReasonFlags.certificate_hold
        return Checked(parsed[0], parsed[1], record, hold)


def _signed_single(
    record: StoredAnswer, cert_id: CertID, signer: tuple[object, SignatureScheme]
) -> ocsp.OCSPSingleResponse | None:
    """The one SingleResponse of the record's body, if the body is an answer the signer
    signed for ``cert_id`` that says what the record's header says."""
    try:
        response = ocsp.load_der_ocsp_response(record.body)
        if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        singles = list(response.responses)
        if len(singles) != 1 or not _says(singles[0], cert_id, record, response):
            return None
        verify(signer[0], signer[1], response.tbs_response_bytes, response.signature)
    except (ValueError, InvalidSignature, TypeError):
        return None
    return singles[0]


def _says(
    single: ocsp.OCSPSingleResponse,
    cert_id: CertID,
    record: StoredAnswer,
    response: ocsp.OCSPResponse,
) -> bool:
    """Whether the signed SingleResponse is for ``cert_id`` and says what the header says."""
    next_update = single.next_update_utc
    return (
        single.serial_number == cert_id.serial_number
        and single.issuer_name_hash == cert_id.issuer_name_hash
        and single.issuer_key_hash == cert_id.issuer_key_hash
        and single.hash_algorithm.name == cert_id.hash_algorithm
        and _STATUSES[single.certificate_status] is record.cert_status
        and next_update is not None
        and int(next_update.timestamp()) == record.next_update
        and int(response.produced_at_utc.timestamp()) == record.produced_at
    )
