"""The HTTP application of a lone worker: the signing host (signing_host.py) behind
OCSP GET/POST, health and metrics. A producer's workers have front_app.py instead."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..config.model import Config
from ..pkcs11.login_gate import LoginGate
from .app_state import CONFIG, HOST, METRICS, SERVICE
from .health import answer, health
from .routes import add_routes
from .signing_host import SigningHost

__all__ = ["create_app"]


def create_app(
    config: Config,
    *,
    handle_signals: bool = False,
    pin: str | None = None,
    login_gate: LoginGate | None = None,
) -> web.Application:
    """The application of the one process that holds the token and the indexes and
    answers HTTP itself. The host starts (indexes read, keys proven) with the app."""
    host = SigningHost(config, pin=pin, login_gate=login_gate, handle_signals=handle_signals)
    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[HOST] = host
    app[CONFIG] = config
    app[METRICS] = host.metrics
    app[SERVICE] = host.service  # the front door with the signing service its one source

    async def running(app: web.Application) -> AsyncIterator[None]:
        await host.start()
        try:
            yield
        finally:
            await host.close()

    app.cleanup_ctx.append(running)
    add_routes(app, config, host.metrics, _readyz, _healthz)
    return app


async def _readyz(request: web.Request) -> web.Response:
    return answer(request.app[HOST].problems())


async def _healthz(request: web.Request) -> web.Response:
    return health(request.app[HOST].problems())
