"""One worker process: its event loop, its listening socket and the application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..config.model import Config
from ..core.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    ConfigError,
    HsmOcspError,
    IndexFormatError,
    exit_code,
)
from ..pkcs11.login_gate import LoginGate
from .access_log import AccessLogger, write_access_lines
from .app import create_app
from .app_state import METRICS
from .capped_site import CappedTCPSite, default_max_connections
from .event_loop import new_event_loop
from .front_app import create_front_app
from .metrics import create_metrics_app
from .per_turn import log_lines_once_a_turn

log = logging.getLogger("hsm_ocsp.serve")

# Request line (a GET carries the request in it), one header, and headers per request.
MAX_LINE = 8190


MAX_HEADER = 2048


MAX_HEADERS = 32


class _UnparsableRequests(logging.Filter):
    """Drop aiohttp's ERROR-with-traceback for each request it cannot parse.

    Any client could fill the log with them at will; the access log already
    records each such request as one line with HTTP 400.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


async def _serve(config: Config, reuse_port: bool, pin: str, gate: LoginGate | None) -> None:
    logging.getLogger("aiohttp.server").addFilter(_UnparsableRequests())
    with log_lines_once_a_turn(asyncio.get_running_loop()):
        try:
            await _serve_app(config, reuse_port, pin, gate)
        finally:
            write_access_lines()  # the last turn's lines


async def _serve_app(config: Config, reuse_port: bool, pin: str, gate: LoginGate | None) -> None:
    if gate is None:  # a worker of the host's producer: no token here
        app = create_front_app(config, handle_signals=True)
    else:
        app = create_app(config, handle_signals=True, pin=pin, login_gate=gate)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("hsm_ocsp.access"),
        # aiohttp cuts a connection that has not sent a whole request (or sits idle)
        # this long after it opened or after its last response: the read timeout.
        keepalive_timeout=config.server.read_timeout,
        # On SIGTERM: requests in progress get this long to finish (a client still
        # sending its body included), then are cut, so that a stop never outlasts
        # the grace period of compose (15 s set), Kubernetes or systemd (20 s).
        shutdown_timeout=config.server.drain_timeout,
        # An OCSP request needs a few short headers: a client holding a connection
        # half-sent must not make the worker buffer up to a megabyte of them.
        max_line_size=MAX_LINE,
        max_field_size=MAX_HEADER,
        max_headers=MAX_HEADERS,
        # Bodies are taken as sent: an encoded one gets 415 from the handler,
        # not a decoder's error (and traceback) from the parser.
        auto_decompress=False,
    )
    await runner.setup()
    site = CappedTCPSite(
        runner,
        config.server.listen_host,
        config.server.listen_port,
        reuse_port=reuse_port,
        backlog=1024,
        max_connections=config.server.max_connections or default_max_connections(),
    )
    await site.start()
    log.info(
        "listening on %s:%d (pid %d), at most %d connections",
        config.server.listen_host,
        config.server.listen_port,
        os.getpid(),
        site.max_connections,
    )
    if config.server.metrics_listen is None:
        log.warning(
            "/metrics is served on the main listener to anyone who asks; set "
            "[server] metrics_listen to a private address"
        )
    metrics_runner = None
    if config.server.metrics_listen is not None:
        metrics_runner = web.AppRunner(
            create_metrics_app(app[METRICS]), handle_signals=False, access_log=None
        )
        await metrics_runner.setup()
        host, port = config.server.metrics_listen
        await web.TCPSite(metrics_runner, host, port, reuse_port=reuse_port).start()
        log.info("metrics on %s:%d/metrics", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            site.give_back_memory()
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()


def run_worker(config: Config, *, reuse_port: bool, pin: str, gate: LoginGate | None) -> int:
    """Run one worker until SIGTERM; the exit code says why it ended. Without a login
    gate it is a worker of the host's producer and opens no token."""
    # A reload asked for while the worker starts must not kill it; the event
    # loop's SIGHUP handler (an index reload) replaces this once the app runs.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(config, reuse_port, pin, gate))
    except (ConfigError, IndexFormatError) as exc:
        log.error("%s", exc)
        return exit_code(exc)
    except HsmOcspError as exc:
        log.error("cannot start: %s", exc)
        return exit_code(exc)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s",
            config.server.listen_host,
            config.server.listen_port,
            exc.strerror,
        )
        return EXIT_FAILURE
    return EXIT_OK
