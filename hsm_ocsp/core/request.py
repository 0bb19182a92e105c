"""Request decoding: the fast reader for the common shape, else the full decoder."""

from __future__ import annotations

from .errors import MalformedRequestError
from .ocsp import CertID, OCSPRequest
from .request_fast import decode_request_fast, read_cert_id
from .request_full import decode_request_full


def decode_request(data: bytes, *, max_cert_ids: int = 64) -> OCSPRequest:
    """Decode a DER OCSPRequest; MalformedRequestError for anything else."""
    if not data:
        raise MalformedRequestError("empty request")
    fast = decode_request_fast(data, max_cert_ids=max_cert_ids)
    if fast is not None:
        return fast
    return decode_request_full(data, max_cert_ids=max_cert_ids)


def decode_cert_id(data: bytes) -> CertID | None:
    """One CertID from its DER, as the store keys it (SHA-1 or SHA-256, DER, nothing
    after it); None for anything else."""
    return read_cert_id(data, 0, len(data)) if data else None
