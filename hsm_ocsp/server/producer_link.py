"""The local link between the host's producer and its workers: a Unix socket in the
state directory, one connection per worker, requests multiplexed on it.

A frame is its length and a request id (``!II``), then the payload. A worker asks
with an op byte and the request it decoded, for the CA it chose (core/question.py: the
producer decodes nothing again); the producer answers with the same id and a reply
(core/reply_wire.py) or, for a readiness question, the problems it sees, one a line. A
worker whose producer is away answers what only the producer can answer with tryLater,
and connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ..core.frames import split_frames
from ..core.model import OCSPResponseStatus
from ..core.ocsp import OCSPRequest
from ..core.outbox import Outbox
from ..core.question import decode_question, encode_question
from ..core.record_check import RecordChecker
from ..core.reply import UNSUCCESSFUL, Reply
from ..core.reply_wire import decode_reply, encode_reply
from ..core.responder import Issuer

__all__ = ["ProducerClient", "serve_link", "socket_path"]

log = logging.getLogger("hsm_ocsp.producer")
_FRAME = struct.Struct("!II")
_ANSWER, _READY = 0, 1
MAX_FRAME = 1 << 20  # a request is at most max_request_bytes (64 KiB at most), a reply small
MAX_IN_FLIGHT = 4096  # requests one worker may have at the producer; beyond: tryLater
MAX_UNREAD = 8 << 20  # bytes of answers a worker may leave unread before it is cut off
TRY_LATER = UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
RETRY_AFTER = 0.2  # seconds between two attempts to reach an absent producer
ASK_TIMEOUT = 30.0

Respond = Callable[[str, OCSPRequest], Awaitable[Reply]]  # a CA, a decoded request
Problems = Callable[[], list[str]]


def socket_path(state_dir: Path) -> Path:
    return state_dir / "producer.sock"


_SUN_PATH = 100  # a Unix socket's path must fit sockaddr_un (108 bytes with its NUL)


class _Reachable:
    """The path to bind or connect to for ``path``: itself, or, when it is too long for
    a Unix socket (a deep state_dir), the same file reached through a descriptor of its
    directory (``/proc/self/fd/N/producer.sock``), held open while in use."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = None
        self.path = str(path)
        if len(self.path.encode()) >= _SUN_PATH:
            self.fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.path = f"/proc/self/fd/{self.fd}/{path.name}"

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def _read_frames(reader: asyncio.StreamReader, buffer: bytearray) -> list[tuple[int, bytes]]:
    """The (id, payload) of the frames one more read completes (often several, at
    times none); ConnectionError at the end of the stream. ``buffer`` keeps the part
    of a frame not complete yet, at most MAX_FRAME and one read."""
    chunk = await reader.read(1 << 16)
    if not chunk:
        raise ConnectionError("closed")
    buffer += chunk
    return [(fields[1], body) for fields, body in split_frames(buffer, _FRAME, MAX_FRAME)]


def _frame(ident: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), ident) + payload


async def serve_link(path: Path, respond: Respond, problems: Problems) -> asyncio.Server:
    """Listen on ``path`` (mode 0600) for workers; the caller closes the server."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        out, buffer = Outbox(writer), bytearray()
        try:
            while True:
                if writer.transport.get_write_buffer_size() > MAX_UNREAD:
                    # A worker that does not read its answers: the bytes it leaves would
                    # grow here without bound. It is cut off (a worker connects again).
                    log.warning(
                        "a link client left %d bytes unread: closing its connection",
                        writer.transport.get_write_buffer_size(),
                    )
                    writer.transport.abort()  # not close(): that would wait to send them
                    break
                for ident, payload in await _read_frames(reader, buffer):
                    if len(tasks) >= MAX_IN_FLIGHT:
                        out.write(_frame(ident, encode_reply(TRY_LATER)))
                        continue
                    task = asyncio.create_task(_answer(ident, payload, out, respond, problems))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except ConnectionError:
            pass  # the worker ended
        finally:
            for task in tasks:
                task.cancel()
            writer.close()

    reachable = _Reachable(path)
    try:
        server = await asyncio.start_unix_server(connection, reachable.path)
    finally:
        reachable.close()  # bound: the socket stays where it is
    os.chmod(path, 0o600)
    return server


async def _answer(
    ident: int, payload: bytes, out: Outbox, respond: Respond, problems: Problems
) -> None:
    if payload[:1] == bytes((_READY,)):
        out.write(_frame(ident, "\n".join(problems()).encode()))
        return
    try:
        ca, request = decode_question(payload[1:])
    except (ValueError, UnicodeDecodeError) as exc:  # never from a worker of this host
        log.error("a link client sent a question that is not one: %s", exc)
        reply = UNSUCCESSFUL[OCSPResponseStatus.MALFORMED_REQUEST]
    else:
        reply = await respond(ca, request)
    out.write(_frame(ident, encode_reply(reply)))


class ProducerClient:
    """A worker's end of the link: the answer source (core/front.py) that asks
    the producer, with the request decoded here."""

    def __init__(self, path: Path, timeout: float = ASK_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._writer: asyncio.StreamWriter | None = None
        self._outbox: Outbox | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._connecting: asyncio.Future[bool] | None = None
        self._failed_at = 0.0
        self._said = False

    async def answer(self, issuer: Issuer, request: OCSPRequest) -> Reply:
        return await self.ask(issuer.name, request)

    async def ask(self, ca: str, request: OCSPRequest) -> Reply:
        """The producer's answer to ``request`` (decoded here) for CA ``ca``; tryLater
        if it cannot be reached or does not answer."""
        payload = await self._call(bytes((_ANSWER,)) + encode_question(ca, request))
        if payload is None:
            return TRY_LATER
        try:
            return decode_reply(payload)
        except ValueError as exc:
            log.error("producer sent a reply that is not one: %s", exc)
            return TRY_LATER

    def replaced(self, issuers: Sequence[Issuer], check: RecordChecker | None) -> None:
        """A reload: nothing kept here (the producer takes it up itself)."""

    async def problems(self) -> list[str]:
        """What the producer says keeps it from answering ([] when ready)."""
        payload = await self._call(bytes((_READY,)), timeout=2.0)
        if payload is None:
            return ["producer: not reachable"]
        return [line for line in payload.decode().splitlines() if line]

    async def _call(self, payload: bytes, timeout: float | None = None) -> bytes | None:
        if not await self._connected():
            return None
        assert self._outbox is not None
        ident = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self._outbox.write(_frame(ident, payload))
            async with asyncio.timeout(timeout or self.timeout):
                return await future
        except (TimeoutError, ConnectionError):
            return None
        finally:
            self._waiting.pop(ident, None)

    async def _connected(self) -> bool:
        if self._writer is not None and not self._writer.is_closing():
            return True
        if self._connecting is not None:  # another request is connecting: wait for it
            return await asyncio.shield(self._connecting)
        if time.monotonic() - self._failed_at < RETRY_AFTER:
            return False
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            ok = await self._connect()
            self._connecting.set_result(ok)
            return ok
        finally:
            self._connecting = None

    async def _connect(self) -> bool:
        reachable = None
        try:
            reachable = _Reachable(self.path)
            reader, self._writer = await asyncio.open_unix_connection(reachable.path)
        except OSError as exc:
            self._failed_at = time.monotonic()
            if not self._said:
                log.warning(
                    "producer not reachable at %s (%s): answering tryLater for what "
                    "the store lacks",
                    self.path,
                    exc.strerror,
                )
                self._said = True
            return False
        finally:
            if reachable is not None:  # connected (or not): the descriptor is not needed
                reachable.close()
        self._outbox = Outbox(self._writer)
        if self._said:
            log.info("producer reachable again")
            self._said = False
        self._reader_task = asyncio.create_task(self._read(reader))
        return True

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = bytearray()
        try:
            while True:
                for ident, payload in await _read_frames(reader, buffer):
                    future = self._waiting.get(ident)
                    if future is not None and not future.done():
                        future.set_result(payload)
        except ConnectionError:
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("producer went away"))

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
