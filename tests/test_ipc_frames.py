"""The framing of the processes' local links: several frames read at once, a frame
split over reads, writes of one turn of the loop sent together."""

from __future__ import annotations

import asyncio

import pytest

from hsm_ocsp.core.outbox import Outbox
from hsm_ocsp.pkcs11.signer_protocol import frame, take_frames
from hsm_ocsp.server.producer_link import MAX_FRAME, _frame, _read_frames


class _Stream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


async def test_an_outbox_sends_the_writes_of_one_turn_in_one_write() -> None:
    stream = _Stream()
    out = Outbox(stream)
    for part in (b"a", b"bc", b"d"):
        out.write(part)
    assert stream.writes == []  # not before the turn ends
    await asyncio.sleep(0)
    assert stream.writes == [b"abcd"]
    out.write(b"e")
    await asyncio.sleep(0)
    assert stream.writes == [b"abcd", b"e"]


async def test_an_outbox_drops_what_a_closing_or_cleared_stream_would_get() -> None:
    stream = _Stream()
    out = Outbox(stream)
    out.write(b"for a child that died")
    out.clear()
    await asyncio.sleep(0)
    out.write(b"to a closed socket")
    stream.closing = True
    await asyncio.sleep(0)
    assert stream.writes == []


def test_signer_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    messages = [(1, 2.5, "root", b"x" * 300), (2, 3.0, None, b""), (3, 1.0, "k", b"\0")]
    wire = b"".join(frame(m) for m in messages)
    for cut in range(1, len(wire)):
        buffer = bytearray(wire[:cut])
        got = take_frames(buffer)
        buffer += wire[cut:]
        got += take_frames(buffer)
        assert got == messages and buffer == b"", cut


async def test_link_frames_read_several_at_once_and_across_reads() -> None:
    reader = asyncio.StreamReader()
    buffer = bytearray()
    wire = _frame(7, b"one") + _frame(8, b"two") + _frame(9, b"three")
    reader.feed_data(wire[:-3])
    assert await _read_frames(reader, buffer) == [(7, b"one"), (8, b"two")]
    reader.feed_data(wire[-3:])
    assert await _read_frames(reader, buffer) == [(9, b"three")]
    assert buffer == b""
    reader.feed_eof()
    with pytest.raises(ConnectionError):
        await _read_frames(reader, buffer)


async def test_a_link_frame_over_the_limit_ends_the_connection() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data((MAX_FRAME + 1).to_bytes(4, "big") + b"\0\0\0\1")
    with pytest.raises(ConnectionError, match="frame of"):
        await _read_frames(reader, bytearray())
