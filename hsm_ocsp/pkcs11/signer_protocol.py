"""What the worker and its signer process say to each other over their socket pair: a
set-up message first (module, PIN, keys), then requests and replies, each a length-
prefixed pickle. Both ends are this package's own processes."""

from __future__ import annotations

import dataclasses
import pickle
import socket
import struct
from typing import Any

from ..core.frames import split_frames
from .key_lookup import KeySpec

LENGTH = struct.Struct("!I")


@dataclasses.dataclass(frozen=True)
class Setup:
    """The first message to the child: what to open and how to log."""

    module: str
    pin: str
    keys: list[KeySpec]
    sign_timeout: float
    log_format: str
    log_level: int
    gate: str | None  # the login gate's directory
    keepalive: float = 0.0  # seconds without a call before one keeps the sessions open

    def __repr__(self) -> str:  # never show the PIN
        return f"Setup(module={self.module!r})"


# A request is (id, deadline, key name, data), or (id, deadline, None, b"") to open
# the token, or (id, deadline, None, the pickled list of KeySpec) to take those keys.
# A reply is (id, signature or error text, ok, retryable, seconds, up, last_error,
# recovered): recovered counts the token sessions opened again and the calls tried again
# since the last reply.
Request = tuple[int, float, str | None, bytes]


Reply = tuple[int, bytes | str, bool, bool, float | None, bool, str | None, tuple[int, int]]


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(body)) + body


def take_frames(buffer: bytearray) -> list[Any]:
    """The complete messages at the start of ``buffer``, which loses them."""
    return [pickle.loads(body) for _, body in split_frames(buffer, LENGTH)]


class FrameReader:
    """The messages a blocking socket brings: every complete one that one ``recv``
    delivers, so a child that finds several requests waiting reads them in one call."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def complete(self) -> bool:
        """Whether a whole message is already read (batch() would not wait)."""
        if len(self._buffer) < LENGTH.size:
            return False
        length: int = LENGTH.unpack_from(self._buffer)[0]
        return len(self._buffer) >= LENGTH.size + length

    def batch(self) -> list[Any] | None:
        """The messages now complete (waiting for one if none is); None at the end."""
        while not (messages := take_frames(self._buffer)):
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        return messages
