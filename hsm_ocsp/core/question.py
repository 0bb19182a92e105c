"""A decoded request as a worker hands it to its producer: the CA it chose, the nonce,
each CertID's parts. The request is decoded once, at the HTTP edge; the producer reads
these fields back without parsing any DER.

Layout (lengths big-endian, 2 bytes each): CA name, nonce (length + 1; 0 for none), the
number of CertIDs, then per CertID its hash algorithm's name (empty for one we do not
support), issuer name hash, issuer key hash, serial (two's complement) and its DER as
the client sent it (echoed in the answer). A request is at most 64 KiB, so every part
fits.
"""

from __future__ import annotations

import struct

from .ocsp import CertID, OCSPRequest

__all__ = ["decode_question", "encode_question"]

_LENGTH = struct.Struct("!H")


def _part(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def _serial(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)


def encode_question(ca: str, request: OCSPRequest) -> bytes:
    nonce = b"\0\0" if request.nonce is None else _LENGTH.pack(len(request.nonce) + 1)
    parts = [_part(ca.encode()), nonce, request.nonce or b"", _LENGTH.pack(len(request.cert_ids))]
    for one in request.cert_ids:
        parts += [
            _part((one.hash_algorithm or "").encode()),
            _part(one.issuer_name_hash),
            _part(one.issuer_key_hash),
            _part(_serial(one.serial_number)),
            _part(one.der),
        ]
    return b"".join(parts)


def decode_question(data: bytes) -> tuple[str, OCSPRequest]:
    """The CA and the request ``encode_question`` made; ValueError for anything else.
    (Plain index arithmetic: this runs for every nonce, in the one producer process.)"""
    unpack = _LENGTH.unpack_from
    try:
        (size,) = unpack(data, 0)
        ca, at = data[2 : 2 + size].decode(), 2 + size
        (size,) = unpack(data, at)
        nonce, at = (data[at + 2 : at + 1 + size] if size else None), at + 2 + max(size - 1, 0)
        (count,) = unpack(data, at)
        at += 2
        cert_ids = []
        for _ in range(count):
            fields = []
            for _ in range(5):  # algorithm, name hash, key hash, serial, DER
                (size,) = unpack(data, at)
                fields.append(data[at + 2 : at + 2 + size])
                at += 2 + size
            algorithm, name_hash, key_hash, serial, der = fields
            if not serial:
                raise ValueError("question with an empty serial")
            number = int.from_bytes(serial, "big", signed=True)
            cert_ids.append(CertID(algorithm.decode() or None, name_hash, key_hash, number, der))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a question: {exc}") from None
    if at != len(data) or not cert_ids:
        raise ValueError("not a question")
    return ca, OCSPRequest(tuple(cert_ids), nonce)
