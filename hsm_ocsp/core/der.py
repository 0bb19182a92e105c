"""A few DER encoders: just what an OCSP response needs, byte-exact."""

from __future__ import annotations

import datetime as dt
import functools

__all__ = [
    "bit_string",
    "boolean",
    "enumerated",
    "explicit",
    "generalized_time",
    "integer",
    "null",
    "octet_string",
    "oid",
    "sequence",
    "tlv",
]


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def explicit(number: int, content: bytes) -> bytes:
    """A context-specific constructed tag ``[number] EXPLICIT``."""
    return tlv(0xA0 | number, content)


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def enumerated(value: int) -> bytes:
    return tlv(0x0A, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def octet_string(value: bytes) -> bytes:
    return tlv(0x04, value)


def bit_string(value: bytes) -> bytes:
    return tlv(0x03, b"\x00" + value)


def boolean(value: bool) -> bytes:
    return tlv(0x01, b"\xff" if value else b"\x00")


def null() -> bytes:
    return b"\x05\x00"


@functools.lru_cache(maxsize=64)  # a handful of OIDs, encoded for every response
def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


@functools.lru_cache(maxsize=64)  # producedAt = thisUpdate, and one second serves many
def generalized_time(when: dt.datetime) -> bytes:
    """GeneralizedTime in UTC, whole seconds, no fraction (RFC 5280 4.1.2.5.2)."""
    utc = when.astimezone(dt.UTC)
    return tlv(0x18, utc.strftime("%Y%m%d%H%M%SZ").encode("ascii"))
