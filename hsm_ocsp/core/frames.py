"""Length-prefixed frames read from a byte stream, as many as one read completes.

The reading side of outbox.py: the producer's link to its workers and a signer
process's socket both send frames whose header starts with the body's length.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["split_frames"]


def split_frames(
    buffer: bytearray, header: struct.Struct, max_size: int | None = None
) -> list[tuple[tuple[Any, ...], bytes]]:
    """The complete frames at the start of ``buffer``, which loses them: each its
    header's fields (the body's length first) and its body. A part of a frame stays
    in ``buffer``. ConnectionError for a length over ``max_size``: the peer broke
    the protocol."""
    start, frames = 0, []
    while len(buffer) - start >= header.size:
        fields = header.unpack_from(buffer, start)
        if max_size is not None and fields[0] > max_size:
            raise ConnectionError(f"frame of {fields[0]} bytes")
        end = start + header.size + fields[0]
        if len(buffer) < end:
            break
        frames.append((fields, bytes(buffer[start + header.size : end])))
        start = end
    del buffer[:start]
    return frames
