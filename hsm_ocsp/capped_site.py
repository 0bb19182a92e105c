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
_LOG_EVERY = 60.0


def default_max_connections() -> int:
    """The cap when none is configured: the descriptor limit less the reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(1, min(10_000, limit - FD_RESERVE))


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class CappedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose protocol factory counts and caps the open connections."""

    def __init__(self, runner: web.BaseRunner, *args: object, max_connections: int, **kw: object):
        super().__init__(runner, *args, **kw)  # type: ignore[arg-type]
        self.max_connections = max_connections
        self.refused = 0
        self._fresh: list[RequestHandler] = []  # made, connection_made not yet run
        self._logged = 0.0

    def _factory(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        # One burst of accepts makes several protocols before their connection_made
        # runs and the server lists them: those of this loop turn are in _fresh.
        if len(server.connections) + len(self._fresh) >= self.max_connections:
            self.refused += 1
            now = time.monotonic()
            if now - self._logged > _LOG_EVERY:
                self._logged = now
                log.warning(
                    "%d connections open, the cap (server.max_connections); refusing more",
                    self.max_connections,
                )
            return _Refused()
        handler = server()
        if not self._fresh:  # runs before this turn's connection_made callbacks
            asyncio.get_running_loop().call_soon(self._fresh.clear)
        self._fresh.append(handler)
        return handler

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
