"""RFC 6960 messages: decode a request, encode responses.

Pure functions over bytes. Requests are decoded with asn1crypto (several
CertIDs per request, which cryptography refuses); responses are encoded here
so that each CertID is echoed byte for byte and every field is as the RFCs
and the Baseline Requirements want it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp

from . import der
from .errors import MalformedRequestError
from .model import CertStatus, OCSPResponseStatus, Revocation

__all__ = [
    "CertID",
    "OCSPRequest",
    "SingleResponse",
    "decode_request",
    "decode_request_fast",
    "decode_request_full",
    "encode_basic_response",
    "encode_response_data",
    "encode_successful",
    "encode_unsuccessful",
]

OID_NONCE = "1.3.6.1.5.5.7.48.1.2"
OID_EXTENDED_REVOKE = "1.3.6.1.5.5.7.48.1.9"
OID_BASIC = "1.3.6.1.5.5.7.48.1.1"
OID_INVALIDITY_DATE = "2.5.29.24"
OID_HOLD_INSTRUCTION = "2.5.29.23"
# Request extensions we know, so a critical one does not fail the request.
_KNOWN_REQUEST_EXTENSIONS = {
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


def decode_request(data: bytes, *, max_cert_ids: int = 64) -> OCSPRequest:
    """Decode a DER OCSPRequest; MalformedRequestError for anything else."""
    if not data:
        raise MalformedRequestError("empty request")
    fast = decode_request_fast(data, max_cert_ids=max_cert_ids)
    if fast is not None:
        return fast
    return decode_request_full(data, max_cert_ids=max_cert_ids)


# --- the fast path ---------------------------------------------------------
#
# Most requests have one shape: no version, requestor name, signature or
# per-CertID extension, CertIDs with one of four hash algorithms, and either no
# extensions or only a nonce, all in DER. This reader takes exactly that shape
# and answers None for anything else, which then goes to the full decoder
# below: it never rejects a request itself, so it cannot refuse what the full
# decoder accepts, and what it returns is what the full decoder would return
# (tests/test_fast_decode.py checks both over the fuzz cases).

_FAST_HASHES = {der.oid(dotted)[2:]: name for dotted, name in HASH_ALGORITHMS.items()}
_NONCE_OID_TLV = der.oid(OID_NONCE)
_NULL = b"\x05\x00"


def _tlv_at(data: bytes, i: int, end: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of a DER TLV at ``i`` inside ``end``; else None."""
    if i + 2 > end:
        return None
    tag = data[i]
    length = data[i + 1]
    i += 2
    if length & 0x80:
        if length == 0x81:
            if i >= end or data[i] < 0x80:
                return None
            length = data[i]
            i += 1
        elif length == 0x82:
            if i + 2 > end or data[i] == 0:
                return None
            length = data[i] << 8 | data[i + 1]
            i += 2
        else:  # longer than 64 KiB, or indefinite: not for this reader
            return None
    stop = i + length
    if stop > end:
        return None
    return tag, i, stop


def _fast_cert_id(data: bytes, start: int, end: int) -> CertID | None:
    """The CertID whose TLV is ``data[start:end]``."""
    outer = _tlv_at(data, start, end)
    if outer is None or outer[0] != 0x30 or outer[2] != end:
        return None
    algorithm = _tlv_at(data, outer[1], end)
    if algorithm is None or algorithm[0] != 0x30:
        return None
    oid = _tlv_at(data, algorithm[1], algorithm[2])
    if oid is None or oid[0] != 0x06:
        return None
    hash_algorithm = _FAST_HASHES.get(data[oid[1] : oid[2]])
    if hash_algorithm is None:
        return None
    if oid[2] != algorithm[2] and data[oid[2] : algorithm[2]] != _NULL:
        return None
    name_hash = _tlv_at(data, algorithm[2], end)
    if name_hash is None or name_hash[0] != 0x04 or name_hash[1] == name_hash[2]:
        return None
    key_hash = _tlv_at(data, name_hash[2], end)
    if key_hash is None or key_hash[0] != 0x04 or key_hash[1] == key_hash[2]:
        return None
    serial = _tlv_at(data, key_hash[2], end)
    if serial is None or serial[0] != 0x02 or serial[2] != end:
        return None
    encoded = data[start:end]
    try:
        _check_der(encoded, 0, len(encoded))
    except (ValueError, IndexError):
        return None
    return CertID(
        hash_algorithm=hash_algorithm,
        issuer_name_hash=data[name_hash[1] : name_hash[2]],
        issuer_key_hash=data[key_hash[1] : key_hash[2]],
        serial_number=int.from_bytes(data[serial[1] : serial[2]], "big", signed=True),
        der=encoded,
    )


def _fast_nonce(data: bytes, start: int, end: int) -> bytes | None:
    """The nonce of ``[2] { SEQUENCE { Extension nonce } }`` at ``start``, filling ``end``."""
    wrapper = _tlv_at(data, start, end)
    if wrapper is None or wrapper[0] != 0xA2 or wrapper[2] != end:
        return None
    extensions = _tlv_at(data, wrapper[1], end)
    if extensions is None or extensions[0] != 0x30 or extensions[2] != end:
        return None
    extension = _tlv_at(data, extensions[1], end)
    if extension is None or extension[0] != 0x30 or extension[2] != end:
        return None
    i = extension[1]
    if data[i : i + len(_NONCE_OID_TLV)] != _NONCE_OID_TLV:
        return None
    value = _tlv_at(data, i + len(_NONCE_OID_TLV), end)
    if value is None or value[0] != 0x04 or value[2] != end:
        return None
    nonce = data[value[1] : value[2]]
    inner = _tlv_at(nonce, 0, len(nonce))
    if inner is None or inner[0] != 0x04 or inner[2] != len(nonce):
        return None
    if not 1 <= inner[2] - inner[1] <= MAX_NONCE:
        return None
    return nonce


def decode_request_fast(data: bytes, *, max_cert_ids: int = 64) -> OCSPRequest | None:
    """The request if it has the common shape (see above), else None."""
    end = len(data)
    outer = _tlv_at(data, 0, end)
    if outer is None or outer[0] != 0x30 or outer[2] != end:
        return None
    tbs = _tlv_at(data, outer[1], end)
    if tbs is None or tbs[0] != 0x30 or tbs[2] != end:  # a signature follows: full decoder
        return None
    request_list = _tlv_at(data, tbs[1], end)
    if request_list is None or request_list[0] != 0x30:  # version or requestor name
        return None
    list_end = request_list[2]
    cert_ids: list[CertID] = []
    i = request_list[1]
    while i < list_end:
        if len(cert_ids) == max_cert_ids:
            return None
        item = _tlv_at(data, i, list_end)
        if item is None or item[0] != 0x30:
            return None
        cert_id = _fast_cert_id(data, item[1], item[2])  # None too if extensions follow it
        if cert_id is None:
            return None
        cert_ids.append(cert_id)
        i = item[2]
    if not cert_ids:
        return None
    nonce = None
    if list_end < end:
        nonce = _fast_nonce(data, list_end, end)
        if nonce is None:
            return None
    return OCSPRequest(cert_ids=tuple(cert_ids), nonce=nonce)


# --- the full decoder ------------------------------------------------------


def decode_request_full(data: bytes, *, max_cert_ids: int = 64) -> OCSPRequest:
    """Decode any OCSPRequest asn1crypto reads, with the DER checks on what is echoed."""
    if not data:
        raise MalformedRequestError("empty request")
    try:
        request = asn1_ocsp.OCSPRequest.load(data, strict=True)
        tbs = request["tbs_request"]
        if tbs["version"].native != "v1":
            raise MalformedRequestError("version is not v1")
        items = tbs["request_list"]
        count = len(items)
        if count == 0:
            raise MalformedRequestError("no CertID in the request")
        if count > max_cert_ids:
            raise MalformedRequestError(f"{count} CertIDs, at most {max_cert_ids} accepted")
        cert_ids = tuple(_cert_id(item) for item in items)
        nonce = _extensions(tbs["request_extensions"])
        for item in items:
            _extensions(item["single_request_extensions"])
        # The rest of what is answered is decoded (a requestor name too); the
        # request's signature and its certificates are not: RFC 6960 4.1.2 lets a
        # responder ignore them, and decoding certificates cost ~20 ms a request.
        tbs.native  # noqa: B018
    except MalformedRequestError:
        raise
    except Exception as exc:  # asn1crypto raises many types on bad input
        raise MalformedRequestError(f"not a DER OCSPRequest ({type(exc).__name__})") from None
    return OCSPRequest(cert_ids=cert_ids, nonce=nonce)


def _cert_id(item: asn1_ocsp.Request) -> CertID:
    cid = item["req_cert"]
    algorithm = cid["hash_algorithm"]
    params = algorithm["parameters"]
    if params.native is not None:
        raise MalformedRequestError("hash algorithm parameters must be absent or NULL")
    name_hash = cid["issuer_name_hash"].native
    key_hash = cid["issuer_key_hash"].native
    serial = cid["serial_number"].native
    if not isinstance(serial, int) or not name_hash or not key_hash:
        raise MalformedRequestError("incomplete CertID")
    return CertID(
        hash_algorithm=HASH_ALGORITHMS.get(algorithm["algorithm"].dotted),
        issuer_name_hash=name_hash,
        issuer_key_hash=key_hash,
        serial_number=serial,
        der=_echoable(cid.dump()),
    )


def _echoable(data: bytes) -> bytes:
    """``data`` if it is DER, as echoed bytes must be; asn1crypto also takes BER."""
    try:
        _check_der(data, 0, len(data))
    except (ValueError, IndexError):
        raise MalformedRequestError("CertID is not DER encoded") from None
    return data


def _check_der(data: bytes, start: int, end: int) -> None:
    """Minimal lengths, minimal INTEGERs, well-formed OIDs, empty NULLs, throughout."""
    i = start
    while i < end:
        tag = data[i]
        if tag & 0x1F == 0x1F:
            raise ValueError("high tag number")
        length = data[i + 1]
        i += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[i : i + size], "big")
            if not 0 < size <= 4 or data[i] == 0 or length < 0x80:
                raise ValueError("length not in its shortest form")
            i += size
        stop = i + length
        if stop > end:
            raise ValueError("content beyond its container")
        if tag & 0x20:
            _check_der(data, i, stop)
        elif tag == 0x02:
            if not length or (length > 1 and (data[i], data[i + 1] >> 7) in ((0, 0), (0xFF, 1))):
                raise ValueError("INTEGER not in its shortest form")
        elif tag == 0x06:
            oid = data[i:stop]
            if not oid or oid[-1] & 0x80 or oid[0] == 0x80:
                raise ValueError("malformed OBJECT IDENTIFIER")
            if any(b == 0x80 and not oid[j - 1] & 0x80 for j, b in enumerate(oid) if j):
                raise ValueError("OBJECT IDENTIFIER not in its shortest form")
        elif tag == 0x05 and length:
            raise ValueError("NULL with content")
        i = stop


def _extensions(extensions: asn1_core.Sequence) -> bytes | None:
    """Check request extensions; return the nonce's extnValue content, if any."""
    nonce = None
    if not extensions:
        return None
    seen = set()
    for ext in extensions:
        oid = ext["extn_id"].dotted
        if oid in seen:
            raise MalformedRequestError(f"extension {oid} appears twice")
        seen.add(oid)
        if oid == OID_NONCE:
            value = ext["extn_value"].contents
            inner = asn1_core.OctetString.load(value, strict=True).native
            if not 1 <= len(inner) <= MAX_NONCE:
                raise MalformedRequestError(f"nonce of {len(inner)} octets; 1 to 128 accepted")
            if asn1_core.OctetString(inner).dump() != value:  # echoed: must be DER
                raise MalformedRequestError("nonce is not DER encoded")
            nonce = value
        elif ext["critical"].native and oid not in _KNOWN_REQUEST_EXTENSIONS:
            raise MalformedRequestError(f"unsupported critical extension {oid}")
    return nonce


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
