"""Request decoding: ``decode_request`` takes the fast path, a plain DER reader for the
common request, else the full decoder (request_full.py).

Most requests are one CertID, SHA-1 or SHA-256, perhaps a nonce. Reading those with
index arithmetic instead of asn1crypto's objects is several times faster (measured
in benchmarks/run.py's cached-answer figures). Anything else, or anything this
reader is unsure of, returns None and goes to the full decoder (request_full.py).
"""

from __future__ import annotations

from . import der
from .der_check import check_der
from .errors import MalformedRequestError
from .ocsp import HASH_ALGORITHMS, MAX_NONCE, OID_NONCE, CertID, OCSPRequest
from .request_full import decode_request_full

__all__ = ["decode_cert_id", "decode_request", "decode_request_fast", "read_cert_id"]

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


def _tagged(
    data: bytes, i: int, end: int, tag: int, whole: bool = False
) -> tuple[int, int, int] | None:
    """The TLV at ``i`` if its tag is ``tag`` (and, ``whole``, it ends at ``end``)."""
    tlv = _tlv_at(data, i, end)
    if tlv is None or tlv[0] != tag or (whole and tlv[2] != end):
        return None
    return tlv


def _octets(data: bytes, i: int, end: int) -> tuple[int, int, int] | None:
    """A non-empty OCTET STRING at ``i``."""
    tlv = _tagged(data, i, end, 0x04)
    return None if tlv is None or tlv[1] == tlv[2] else tlv


def _hash_name(data: bytes, start: int, end: int) -> str | None:
    """The hash of the AlgorithmIdentifier whose content is ``data[start:end]``: one we
    read (its parameters absent or NULL), else None."""
    oid = _tagged(data, start, end, 0x06)
    if oid is None:
        return None
    if oid[2] != end and data[oid[2] : end] != _NULL:
        return None
    return _FAST_HASHES.get(data[oid[1] : oid[2]])


def read_cert_id(data: bytes, start: int, end: int) -> CertID | None:
    """The CertID whose TLV is ``data[start:end]``."""
    outer = _tagged(data, start, end, 0x30, whole=True)
    algorithm = None if outer is None else _tagged(data, outer[1], end, 0x30)
    if algorithm is None:
        return None
    hash_algorithm = _hash_name(data, algorithm[1], algorithm[2])
    name_hash = None if hash_algorithm is None else _octets(data, algorithm[2], end)
    key_hash = None if name_hash is None else _octets(data, name_hash[2], end)
    serial = None if key_hash is None else _tagged(data, key_hash[2], end, 0x02, whole=True)
    if serial is None or key_hash is None or name_hash is None:
        return None
    encoded = data[start:end]
    try:
        check_der(encoded, 0, len(encoded))
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
    wrapper = _tagged(data, start, end, 0xA2, whole=True)
    extensions = None if wrapper is None else _tagged(data, wrapper[1], end, 0x30, whole=True)
    extension = None if extensions is None else _tagged(data, extensions[1], end, 0x30, whole=True)
    if extension is None:
        return None
    i = extension[1] + len(_NONCE_OID_TLV)
    if data[extension[1] : i] != _NONCE_OID_TLV:
        return None
    value = _tagged(data, i, end, 0x04, whole=True)
    if value is None:
        return None
    nonce = data[value[1] : value[2]]
    inner = _tagged(nonce, 0, len(nonce), 0x04, whole=True)
    if inner is None or not 1 <= inner[2] - inner[1] <= MAX_NONCE:
        return None
    return nonce


def decode_request_fast(data: bytes, *, max_cert_ids: int = 64) -> OCSPRequest | None:
    """The request if it has the common shape (see above), else None."""
    end = len(data)
    outer = _tagged(data, 0, end, 0x30, whole=True)
    # The TBSRequest fills it (else a signature follows: the full decoder's), and its
    # first field is the requestList (else a version or a requestor name).
    tbs = None if outer is None else _tagged(data, outer[1], end, 0x30, whole=True)
    request_list = None if tbs is None else _tagged(data, tbs[1], end, 0x30)
    if request_list is None:
        return None
    list_end = request_list[2]
    cert_ids = _fast_cert_ids(data, request_list[1], list_end, max_cert_ids)
    if not cert_ids:  # None, or an empty list
        return None
    nonce = None
    if list_end < end:
        nonce = _fast_nonce(data, list_end, end)
        if nonce is None:
            return None
    return OCSPRequest(cert_ids=tuple(cert_ids), nonce=nonce)


def _fast_cert_ids(data: bytes, i: int, end: int, max_cert_ids: int) -> list[CertID] | None:
    """The CertIDs of the requestList whose content is ``data[i:end]``."""
    cert_ids: list[CertID] = []
    while i < end:
        if len(cert_ids) == max_cert_ids:
            return None
        item = _tagged(data, i, end, 0x30)
        if item is None:
            return None
        cert_id = read_cert_id(data, item[1], item[2])  # None too if extensions follow it
        if cert_id is None:
            return None
        cert_ids.append(cert_id)
        i = item[2]
    return cert_ids


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
