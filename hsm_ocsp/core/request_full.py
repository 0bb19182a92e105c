"""The full request decoder: asn1crypto, strict DER, every field checked."""

from __future__ import annotations

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp

from .der_check import check_der
from .errors import MalformedRequestError
from .ocsp import (
    HASH_ALGORITHMS,
    KNOWN_REQUEST_EXTENSIONS,
    MAX_NONCE,
    OID_NONCE,
    CertID,
    OCSPRequest,
)


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
        check_der(data, 0, len(data))
    except (ValueError, IndexError):
        raise MalformedRequestError("CertID is not DER encoded") from None
    return data


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
        elif ext["critical"].native and oid not in KNOWN_REQUEST_EXTENSIONS:
            raise MalformedRequestError(f"unsupported critical extension {oid}")
    return nonce
