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


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def length(self) -> int:
        if self.at + 2 > len(self.data):
            raise ValueError("question cut short")
        (value,) = _LENGTH.unpack_from(self.data, self.at)
        self.at += 2
        return int(value)

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise ValueError("question cut short")
        part = self.data[self.at : self.at + size]
        self.at += size
        return part

    def part(self) -> bytes:
        return self.take(self.length())


def decode_question(data: bytes) -> tuple[str, OCSPRequest]:
    """The CA and the request ``encode_question`` made; ValueError for anything else."""
    read = _Reader(data)
    ca = read.part().decode()
    nonce_size = read.length()
    nonce = read.take(nonce_size - 1) if nonce_size else None
    cert_ids = []
    for _ in range(read.length()):
        algorithm = read.part().decode()
        name_hash, key_hash, serial, der = read.part(), read.part(), read.part(), read.part()
        if not serial:
            raise ValueError("question with an empty serial")
        cert_ids.append(
            CertID(
                algorithm or None,
                name_hash,
                key_hash,
                int.from_bytes(serial, "big", signed=True),
                der,
            )
        )
    if read.at != len(data) or not cert_ids:
        raise ValueError("not a question")
    return ca, OCSPRequest(tuple(cert_ids), nonce)
