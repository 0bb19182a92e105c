"""The routes every serving process has: OCSP GET and POST, health, metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web, web_response

from ..config.model import Config
from .handlers import OCSPHandler, expect_within_limit, not_allowed
from .metrics import METRICS_PATH, Metrics

__all__ = ["SERVER_SOFTWARE", "add_routes"]

SERVER_SOFTWARE = "hsm-ocsp"


def add_routes(
    app: web.Application,
    config: Config,
    metrics: Metrics,
    readyz: Callable[[web.Request], Awaitable[web.Response]],
    healthz: Callable[[web.Request], Awaitable[web.Response]],
) -> None:
    # Server: hsm-ocsp, not Python's and aiohttp's versions for a scanner to match. aiohttp
    # fills the header from this module constant; setting it once costs nothing a
    # request (an on_response_prepare signal cost ~8 % of a cached answer's throughput).
    setattr(web_response, "SERVER_SOFTWARE", SERVER_SOFTWARE)  # noqa: B010  (not exported)
    handler = OCSPHandler(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    not_ocsp = ["/healthz", "/readyz"]
    if config.server.metrics_listen is None:  # else worker.py listens there
        app.router.add_get(METRICS_PATH, metrics.handle)
        not_ocsp.append(METRICS_PATH)
    # [\s\S], not ".": a path with a decoded newline (%0A) must reach the handler too
    # and be answered malformedRequest, not 404. Every request to an OCSP path is
    # timed and counted, a method other than GET, HEAD or POST too (405).
    ocsp_path = r"/{tail:[\s\S]*}"
    app.router.add_get(ocsp_path, metrics.observe(handler.get))
    app.router.add_post(
        ocsp_path, metrics.observe(handler.post), expect_handler=expect_within_limit
    )
    app.router.add_route("*", ocsp_path, metrics.observe(not_allowed, not_ocsp))
