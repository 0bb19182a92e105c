"""A strict DER check: RFC 6960 requests are DER, and echoed parts must be."""

from __future__ import annotations


def check_der(data: bytes, start: int, end: int) -> None:
    """Minimal lengths, minimal INTEGERs, well-formed OIDs, empty NULLs, throughout;
    ValueError (or IndexError on a cut) at the first that is not."""
    i = start
    while i < end:
        tag = data[i]
        if tag & 0x1F == 0x1F:
            raise ValueError("high tag number")
        i, length = _length(data, i + 1)
        stop = i + length
        if stop > end:
            raise ValueError("content beyond its container")
        if tag & 0x20:
            check_der(data, i, stop)
        else:
            _check_primitive(tag, data[i:stop])
        i = stop


def _length(data: bytes, i: int) -> tuple[int, int]:
    """Where the content starts and how long it is, for the length octets at ``i``."""
    length = data[i]
    i += 1
    if not length & 0x80:
        return i, length
    size = length & 0x7F
    length = int.from_bytes(data[i : i + size], "big")
    if not 0 < size <= 4 or data[i] == 0 or length < 0x80:
        raise ValueError("length not in its shortest form")
    return i + size, length


def _check_primitive(tag: int, content: bytes) -> None:
    if tag == 0x02:
        _check_integer(content)
    elif tag == 0x06:
        _check_oid(content)
    elif tag == 0x05 and content:
        raise ValueError("NULL with content")


def _check_integer(content: bytes) -> None:
    if not content or (len(content) > 1 and (content[0], content[1] >> 7) in ((0, 0), (0xFF, 1))):
        raise ValueError("INTEGER not in its shortest form")


def _check_oid(content: bytes) -> None:
    if not content or content[-1] & 0x80 or content[0] == 0x80:
        raise ValueError("malformed OBJECT IDENTIFIER")
    if any(b == 0x80 and not content[j - 1] & 0x80 for j, b in enumerate(content) if j):
        raise ValueError("OBJECT IDENTIFIER not in its shortest form")
