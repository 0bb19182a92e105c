"""A TCP listener that refuses connections beyond a cap, so descriptors stay for the rest.

Every open connection holds a file descriptor, and so does every index read and
the signer's socket. A flood of idle connections could use up the worker's
descriptor limit, and a reload's ``open()`` would then fail (EMFILE) while a
revocation waits. Beyond ``max_connections`` a new connection is closed at
once, before it holds memory or a request; the descriptors below the limit
that the cap leaves free are the worker's reserve.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import resource
import time

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["FD_RESERVE", "CappedTCPSite", "default_max_connections"]

log = logging.getLogger("hsm_ocsp.serve")
# Descriptors kept for everything but client connections: listeners, the
# signer, index files, metrics files, logs.
FD_RESERVE = 64
DEFAULT_CAP = 1024
_LOG_EVERY = 60.0
_TRIM_AFTER = 64  # connections at the peak before memory is worth giving back


def default_max_connections() -> int:
    """The cap when none is configured: 1024, or the descriptor limit less the reserve.

    Each connection may hold up to ~130 KiB (buffers, half-sent headers within
    the bounds worker.py sets), so 1024 of them stay under ~130 MiB a worker.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(1, min(DEFAULT_CAP, limit - FD_RESERVE))


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class CappedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose protocol factory counts and caps the open connections."""

    def __init__(self, runner: web.BaseRunner, *args: object, max_connections: int, **kw: object):
        super().__init__(runner, *args, **kw)  # type: ignore[arg-type]
        self.max_connections = max_connections
        self.refused = 0
        self.evicted = 0  # idle connections closed to make room for new ones
        self._fresh: list[RequestHandler] = []  # made, connection_made not yet run
        self._logged = 0.0
        self._peak = 0  # most connections open since memory was last given back

    def give_back_memory(self) -> bool:
        """After many connections closed, hand the freed heap back to the system.

        The C allocator keeps what a burst of connections (their buffers and
        half-sent headers) freed; ``malloc_trim`` returns it. Called once a
        second; it acts only when the connections fell to under half their peak.
        """
        server = self._runner.server
        open_now = 0 if server is None else len(server.connections)
        self._peak = max(self._peak, open_now)
        if self._peak < _TRIM_AFTER or open_now * 2 > self._peak:
            return False
        self._peak = open_now
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)
        return True

    def _factory(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) > self._peak:
            self._peak = len(server.connections)
        # One burst of accepts makes several protocols before their connection_made
        # runs and the server lists them: those of this loop turn are in _fresh.
        if len(server.connections) + len(self._fresh) >= self.max_connections:
            room = self._evict_idle(server.connections)
            now = time.monotonic()
            if now - self._logged > _LOG_EVERY:
                self._logged = now
                log.warning(
                    "%d connections open, the cap (server.max_connections); %s",
                    self.max_connections,
                    "closing idle ones to make room" if room else "refusing more",
                )
            if not room:
                self.refused += 1
                return _Refused()
        handler = server()
        if not self._fresh:  # runs before this turn's connection_made callbacks
            asyncio.get_running_loop().call_soon(self._fresh.clear)
        self._fresh.append(handler)
        return handler

    def _evict_idle(self, connections: list[RequestHandler]) -> bool:
        """At the cap, make room for a new connection by closing an idle one (no request
        in progress, waiting for one): the oldest of the address that holds the most
        connections. Idle connections, however many, never lock other clients out, and
        one address's many are the first to go. False if every connection is busy."""
        idle: dict[object, list[RequestHandler]] = {}
        held: dict[object, int] = {}
        for handler in connections:
            transport = handler.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            address = peer[0] if isinstance(peer, tuple) else peer
            held[address] = held.get(address, 0) + 1
            waiting = not handler._request_in_progress and handler._waiter is not None
            if waiting and transport is not None and not transport.is_closing():
                idle.setdefault(address, []).append(handler)
        if not idle:
            return False
        address = max(idle, key=lambda a: held[a])
        idle[address][0].force_close()
        self.evicted += 1
        return True

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
