"""The response encoder: ResponseData, BasicOCSPResponse and OCSPResponse in DER,
written directly (no asn1crypto objects on the hot path)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from . import der
from .model import CertStatus, OCSPResponseStatus
from .ocsp import (
    OID_BASIC,
    OID_EXTENDED_REVOKE,
    OID_HOLD_INSTRUCTION,
    OID_INVALIDITY_DATE,
    OID_NONCE,
    SingleResponse,
)


def _extension(oid: str, value: bytes) -> bytes:
    return der.sequence(der.oid(oid), der.octet_string(value))


def _cert_status(single: SingleResponse) -> bytes:
    if single.status is CertStatus.GOOD:
        return b"\x80\x00"
    if single.status is CertStatus.UNKNOWN:
        return b"\x82\x00"
    revocation = single.revocation
    assert revocation is not None
    revoked_info = der.generalized_time(revocation.revocation_time)
    if revocation.reason is not None:
        revoked_info += der.explicit(0, der.enumerated(int(revocation.reason)))
    return der.tlv(0xA1, revoked_info)


def _single_response(single: SingleResponse, this_update: bytes, next_update: bytes) -> bytes:
    extensions = b""
    revocation = single.revocation
    if single.status is CertStatus.REVOKED and revocation is not None:
        if revocation.invalidity_date is not None:
            extensions += _extension(
                OID_INVALIDITY_DATE, der.generalized_time(revocation.invalidity_date)
            )
        if revocation.hold_instruction is not None:
            extensions += _extension(OID_HOLD_INSTRUCTION, der.oid(revocation.hold_instruction))
    return der.sequence(
        single.cert_id.der,
        _cert_status(single),
        this_update,
        der.explicit(0, next_update),
        der.explicit(1, der.sequence(extensions)) if extensions else b"",
    )


def encode_response_data(
    *,
    responder_key_hash: bytes,
    produced_at: dt.datetime,
    this_update: dt.datetime,
    next_update: dt.datetime,
    responses: Sequence[SingleResponse],
    nonce: bytes | None = None,
    extended_revoke: bool = False,
) -> bytes:
    """The DER of ResponseData (what the token signs)."""
    this_der = der.generalized_time(this_update)
    next_der = der.generalized_time(next_update)
    extensions = b""
    if nonce is not None:
        extensions += _extension(OID_NONCE, nonce)
    if extended_revoke:
        extensions += _extension(OID_EXTENDED_REVOKE, der.null())
    return der.sequence(
        der.explicit(2, der.octet_string(responder_key_hash)),  # responderID byKey
        der.generalized_time(produced_at),
        der.sequence(*(_single_response(s, this_der, next_der) for s in responses)),
        der.explicit(1, der.sequence(extensions)) if extensions else b"",
    )


def encode_basic_response(
    response_data: bytes, signature_algorithm: bytes, signature: bytes, certs: Sequence[bytes]
) -> bytes:
    """BasicOCSPResponse from signed ResponseData; ``certs`` are DER certificates."""
    return der.sequence(
        response_data,
        signature_algorithm,
        der.bit_string(signature),
        der.explicit(0, der.sequence(*certs)) if certs else b"",
    )


def encode_successful(basic_response: bytes) -> bytes:
    """OCSPResponse with status successful around a BasicOCSPResponse."""
    return der.sequence(
        der.enumerated(OCSPResponseStatus.SUCCESSFUL),
        der.explicit(0, der.sequence(der.oid(OID_BASIC), der.octet_string(basic_response))),
    )


def encode_unsuccessful(status: OCSPResponseStatus) -> bytes:
    """An error OCSPResponse: status only, no responseBytes (RFC 6960 4.2.1)."""
    if status is OCSPResponseStatus.SUCCESSFUL:
        raise ValueError("a successful response needs responseBytes")
    return der.sequence(der.enumerated(status))
