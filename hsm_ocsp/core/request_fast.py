"""The fast path of request decoding: a plain DER reader for the common request.

Most requests are one CertID, SHA-1 or SHA-256, perhaps a nonce. Reading those with
index arithmetic instead of asn1crypto's objects is several times faster (measured
in benchmarks/run.py's cached-answer figures). Anything else, or anything this
reader is unsure of, returns None and goes to the full decoder (request_full.py).
"""

from __future__ import annotations

from . import der
from .der_check import check_der
from .ocsp import HASH_ALGORITHMS, MAX_NONCE, OID_NONCE, CertID, OCSPRequest

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


def read_cert_id(data: bytes, start: int, end: int) -> CertID | None:
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
        item = _tlv_at(data, i, end)
        if item is None or item[0] != 0x30:
            return None
        cert_id = read_cert_id(data, item[1], item[2])  # None too if extensions follow it
        if cert_id is None:
            return None
        cert_ids.append(cert_id)
        i = item[2]
    return cert_ids
