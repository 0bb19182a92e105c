"""A strict DER check: RFC 6960 requests are DER, and echoed parts must be."""

from __future__ import annotations


def check_der(data: bytes, start: int, end: int) -> None:
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
            check_der(data, i, stop)
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
