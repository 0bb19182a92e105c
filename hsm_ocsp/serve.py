"""``hsm-ocsp serve``: run the responder in one or several worker processes.

Workers share the port through the kernel (``SO_REUSEPORT``): each worker
binds its own socket and the kernel spreads new connections over them, so no
process sits in the data path and a worker's death touches only its own
connections. The parent only forks, watches and replaces workers; it never
opens the token, because a PKCS#11 module must be initialised after fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .capped_site import CappedTCPSite, default_max_connections
from .config import Config
from .errors import ConfigError, HsmOcspError, IndexFormatError
from .http import METRICS, create_app
from .key_set import keys_changed, prove_new_keys
from .login_gate import LoginGate
from .metrics import (
    AccessLogger,
    create_metrics_app,
    prepare_multiprocess,
    process_dead,
    remove_multiprocess_dir,
)
from .pin import forbid_core_dumps, take_pin
from .reload import read_reloadable, unservable

__all__ = ["EXIT_CONFIG", "new_event_loop", "run_server"]

log = logging.getLogger("hsm_ocsp.serve")
EXIT_CONFIG = 2
EVENT_LOOP_ENV = "HSM_OCSP_EVENT_LOOP"
_STARTUP_GRACE = 10.0
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


class _TurnBufferedStream:
    """A log stream that writes the event loop's lines once a loop turn.

    Each access log line was a write() system call of its own. Under load one
    loop turn answers many requests: their lines now go out together at the end
    of the turn (``call_soon``), a few microseconds after they were logged.
    Lines from other threads, or while the loop does not run, are written at
    once, after the ones waiting.
    """

    def __init__(self, stream: TextIO, loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread and self._loop.is_running()

    def write(self, text: str) -> int:
        with self._lock:
            self._lines.append(text)
            first = len(self._lines) == 1
        if not self._on_loop():
            self.write_lines()
        elif first:
            self._loop.call_soon(self.write_lines)
        return len(text)

    def flush(self) -> None:
        """What ``StreamHandler`` calls after each line: on the loop, wait for the turn's end."""
        if not self._on_loop():
            self.write_lines()

    def write_lines(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            if lines:
                self.stream.write("".join(lines))
                self.stream.flush()


@contextlib.contextmanager
def _log_lines_once_a_turn(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Give the root logger's stream handlers a :class:`_TurnBufferedStream` meanwhile."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    streams = [(h, h.stream) for h in handlers]
    buffered = [_TurnBufferedStream(stream, loop) for _, stream in streams]
    for (handler, _), stream in zip(streams, buffered, strict=True):
        handler.stream = stream
    try:
        yield
    finally:
        for (handler, original), stream in zip(streams, buffered, strict=True):
            stream.write_lines()
            handler.stream = original


async def _serve(config: Config, reuse_port: bool, pin: str, gate: LoginGate) -> None:
    logging.getLogger("aiohttp.server").addFilter(_UnparsableRequests())
    with _log_lines_once_a_turn(asyncio.get_running_loop()):
        await _serve_app(config, reuse_port, pin, gate)


async def _serve_app(config: Config, reuse_port: bool, pin: str, gate: LoginGate) -> None:
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


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A worker's event loop: uvloop's (a dependency), or asyncio's where it is missing.

    uvloop answered a cached request with about 10 % less CPU than asyncio's
    own loop (wrk, 2 workers, 4 alternating pairs). ``HSM_OCSP_EVENT_LOOP=asyncio``
    asks for asyncio's loop: to compare (``benchmarks/run.py --loop asyncio``), or
    where uvloop misbehaves.
    """
    if os.environ.get(EVENT_LOOP_ENV) == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:  # e.g. a venv built with --no-deps on a host without it
        log.warning("uvloop is not installed; using asyncio's event loop")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_worker(config: Config, *, reuse_port: bool, pin: str, gate: LoginGate) -> int:
    """Run one worker until SIGTERM; the exit code says why it ended."""
    # A reload asked for while the worker starts must not kill it; the event
    # loop's SIGHUP handler (an index reload) replaces this once the app runs.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(config, reuse_port, pin, gate))
    except (ConfigError, IndexFormatError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except HsmOcspError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s",
            config.server.listen_host,
            config.server.listen_port,
            exc.strerror,
        )
        return EXIT_CONFIG
    return 0


def _fork_worker(config: Config, pin: str, gate: LoginGate) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            code = run_worker(config, reuse_port=True, pin=pin, gate=gate)
        except BaseException:
            log.exception("worker crashed")
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def run_server(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    problems = unservable(config)
    if problems:  # every answer signed with it would fail validation: do not start
        log.error("%s", problems[0])
        return EXIT_CONFIG
    forbid_core_dumps()
    try:
        pin = take_pin(config)  # before any worker or signer starts: none inherits it
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    gate = LoginGate.create()  # shared by every worker's signer: one failed login at most
    try:
        workers = config.server.workers
        if workers == 1:
            return run_worker(config, reuse_port=False, pin=pin, gate=gate)
        metrics_dir = prepare_multiprocess()  # before fork: workers sum their metrics there
        try:
            return _supervise(config, workers, pin, gate)
        finally:
            remove_multiprocess_dir(metrics_dir)
    finally:
        gate.remove()


def _reloaded(config: Config, pin: str, gate: LoginGate) -> Config:
    """The configuration a SIGHUP brings, or the running one if it is refused. A new
    key is proven first on the token, so that a worker forked later can use it."""
    new = read_reloadable(config)
    if new is None or not keys_changed(config, new):
        return new or config
    try:
        asyncio.run(prove_new_keys(new, pin, gate))
    except HsmOcspError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return config
    return new


def _supervise(config: Config, workers: int, pin: str, gate: LoginGate) -> int:
    stopping = False
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = time.monotonic()
    children = {_fork_worker(config, pin, gate): time.monotonic() for _ in range(workers)}
    exit_code = 0
    while children:
        while received:
            signum = received.pop()
            if signum == signal.SIGHUP:
                gate.reset()  # the operator acted: a refused login may be tried once more
                config = _reloaded(config, pin, gate)  # for the workers forked later
                for pid in children:
                    os.kill(pid, signal.SIGHUP)
            elif not stopping:
                stopping = True
                for pid in children:
                    os.kill(pid, signal.SIGTERM)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
            continue
        born = children.pop(pid, None)
        if born is None:
            continue
        process_dead(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        if code == EXIT_CONFIG and time.monotonic() - started < _STARTUP_GRACE:
            log.error("worker %d could not start; stopping", pid)
            stopping = True
            exit_code = EXIT_CONFIG
            for other in children:
                os.kill(other, signal.SIGTERM)
            continue
        log.error("worker %d ended (exit %s); starting another", pid, code)
        if time.monotonic() - born < 1.0:
            time.sleep(1.0)  # a worker that dies at once must not spin the CPU
        children[_fork_worker(config, pin, gate)] = time.monotonic()
    return exit_code
