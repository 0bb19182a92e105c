"""Frames written to a stream in one turn of the event loop, sent together at its end.

A process that answers many requests at once (the producer to its workers, a
worker to its signer process) would otherwise make one ``send`` for each, and
wake the other end once for each. Gathered, one system call carries them all and
the other end reads them in one.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Outbox"]


class Stream(Protocol):
    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...


class Outbox:
    """What :meth:`write` is given goes to ``stream`` once the loop's turn ends."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._frames: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames.append(frame)

    def clear(self) -> None:
        """Drop what is not sent yet (the stream is going away)."""
        self._frames.clear()

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if frames and not self.stream.is_closing():
            self.stream.write(b"".join(frames))
