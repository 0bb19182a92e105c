"""The HTTP face: aiohttp application factory, OCSP GET/POST, health, caching headers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from email.utils import format_datetime
from urllib.parse import unquote

from aiohttp import ClientPayloadError, web, web_response

from .config import Config, read_pin
from .errors import HsmOcspError
from .http_keys import CA_NAME, REPLY
from .index_source import IndexSource
from .key_set import key_specs, prove_keys, take_keys
from .login_gate import LoginGate
from .metrics import METRICS_PATH, Metrics
from .reload import read_reloadable
from .responder import Issuer
from .service import OCSPService, Reply
from .token_process import TokenProcess

__all__ = ["METRICS", "SERVICE", "SOURCES", "TOKEN", "build_token", "create_app"]

log = logging.getLogger("hsm_ocsp.http")

SERVICE = web.AppKey("service", OCSPService)
SOURCES = web.AppKey("sources", dict[str, IndexSource])
TOKEN = web.AppKey("token", TokenProcess)
CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
RUNNING = web.AppKey("running", dict[str, Config])

OCSP_RESPONSE = "application/ocsp-response"
_ERROR_HEADERS = {"Cache-Control": "no-cache"}
_PROBE = b"hsm-ocsp key check"
SERVER_SOFTWARE = "hsm-ocsp"
WATCH_INTERVAL = 1.0
PROBE_INTERVAL = 10.0


def build_token(
    config: Config, pin: str | None = None, gate: LoginGate | None = None
) -> TokenProcess:
    """The token with one key a CA (not yet started); the PIN read as the config says
    unless given."""
    return TokenProcess(
        config.token.module,
        pin if pin is not None else read_pin(config.token, config.path),
        key_specs(config),
        sign_timeout=config.token.sign_timeout,
        log_format=config.server.log_format,
        gate=gate,
    )


@functools.lru_cache(maxsize=1024)  # a cached reply's two dates, on every answer
def http_date(when: dt.datetime) -> str:
    return format_datetime(when.astimezone(dt.UTC), usegmt=True)


class _ReplyHeaders:
    """The HTTP headers of one reply, worked out once: only max-age moves.

    aiohttp copies the headers into each response, so these dicts are shared.
    """

    __slots__ = ("_get", "_max_age", "_next_update", "post", "reply")

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self._max_age = -1
        self._next_update = 0.0
        if not reply.successful:
            self.post = self._get = _ERROR_HEADERS
            return
        assert reply.produced_at is not None and reply.next_update is not None
        assert reply.etag is not None
        self.post = {
            "ETag": reply.etag,
            "Last-Modified": http_date(reply.produced_at),
            "Expires": http_date(reply.next_update),
        }
        self._get = self.post
        self._next_update = reply.next_update.timestamp()

    def get(self, now: float) -> dict[str, str]:
        """The headers of a GET answer at Unix time ``now``."""
        if not self.reply.successful:
            return self._get
        max_age = max(0, int(self._next_update - now))
        if max_age != self._max_age:
            self._get = {
                **self.post,
                "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
            }
            self._max_age = max_age
        return self._get


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags


def _split_path(raw_path: str, names: frozenset[str]) -> tuple[str | None, str]:
    """``/root/MEow...`` -> ("root", "MEow..."); ``//MEow`` -> (None, "MEow").

    An absolute-form target (``http://host/MEow...``, RFC 9112 3.2.2) is read
    from its path.
    """
    if raw_path[:1] != "/" and "://" in raw_path[:10]:
        raw_path = "/" + raw_path.split("/", 3)[3] if raw_path.count("/") >= 3 else "/"
    path = raw_path.split("?", 1)[0].lstrip("/")
    first, slash, rest = path.partition("/")
    if slash and first in names:
        return first, rest.lstrip("/")
    if not slash and first in names:
        return first, ""
    return None, path


@functools.lru_cache(maxsize=1024)  # repeated GETs skip URL and base64 decoding
def decode_get(encoded: str) -> bytes | None:
    """The DER of a GET request path: URL-decoded base64 (RFC 6960 A.1)."""
    text = unquote(encoded).strip()
    text = text.replace("-", "+").replace("_", "/").replace(" ", "+")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class OCSPHandler:
    # Bounds of the per-handler memos below (entries, and the longest GET path kept).
    MEMO_ENTRIES = 1024
    MEMO_PATH = 1024

    def __init__(self, app: web.Application) -> None:
        self.app = app
        # id(reply) -> headers of a cached reply (which they hold, so the id stays its own)
        self._reply_headers: dict[int, _ReplyHeaders] = {}
        # raw GET path -> (CA name, DER request or None): repeated GETs skip the parsing
        self._get_paths: dict[str, tuple[str | None, bytes | None]] = {}

    def _headers_of(self, reply: Reply) -> _ReplyHeaders:
        if not reply.cached:  # signed for this request alone
            return _ReplyHeaders(reply)
        memo = self._reply_headers
        headers = memo.get(id(reply))
        if headers is None or headers.reply is not reply:
            if len(memo) >= self.MEMO_ENTRIES:
                memo.clear()
            headers = memo[id(reply)] = _ReplyHeaders(reply)
        return headers

    def _reply(self, request: web.Request, reply: Reply, *, cacheable: bool) -> web.Response:
        reply_headers = self._headers_of(reply)
        headers = reply_headers.get(time.time()) if cacheable else reply_headers.post
        request[REPLY] = reply
        if reply.successful and _etag_matches(
            request.headers.get("If-None-Match"), reply.etag or ""
        ):
            return web.Response(status=304, headers=headers)
        return web.Response(body=reply.body, content_type=OCSP_RESPONSE, headers=headers)

    def _parse_get(self, raw_path: str, names: frozenset[str]) -> tuple[str | None, bytes | None]:
        parsed = self._get_paths.get(raw_path)
        if parsed is None:
            ca_name, encoded = _split_path(raw_path, names)
            parsed = (ca_name, decode_get(encoded) if encoded else None)
            if len(raw_path) <= self.MEMO_PATH:
                if len(self._get_paths) >= self.MEMO_ENTRIES:
                    self._get_paths.clear()
                self._get_paths[raw_path] = parsed
        return parsed

    async def get(self, request: web.Request) -> web.Response:
        service = self.app[SERVICE]
        ca_name, data = self._parse_get(request.raw_path, service.issuer_names)
        if ca_name is not None:
            request[CA_NAME] = ca_name
        if data is None:
            reply = await service.respond(b"", ca_name)  # malformedRequest
        else:
            reply = await service.respond(data, ca_name)
        return self._reply(request, reply, cacheable=True)

    async def post(self, request: web.Request) -> web.Response:
        service = self.app[SERVICE]
        ca_name, rest = _split_path(request.raw_path, service.issuer_names)
        if rest:
            raise web.HTTPNotFound()
        if ca_name is not None:
            request[CA_NAME] = ca_name
        limit = self.app[CONFIG].server.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return _refuse(
                415, "request bodies are not decoded: send them without Content-Encoding"
            )
        try:
            if request.content.is_eof():  # the whole body is here (the usual case): no timer
                data = await request.read()  # client_max_size turns a larger body into 413
            else:
                async with asyncio.timeout(self.app[CONFIG].server.read_timeout):
                    data = await request.read()
        except TimeoutError:
            return await _body_timed_out(request)
        except (ConnectionError, ClientPayloadError):  # the client left mid-body
            return _refuse(400, "request body incomplete")
        reply = await service.respond(data, ca_name)
        return self._reply(request, reply, cacheable=False)


def _refuse(status: int, text: str) -> web.Response:
    """An HTTP error that closes the connection (its body may be unread)."""
    response = web.Response(status=status, text=text + "\n", headers=_ERROR_HEADERS)
    response.force_close()
    return response


async def _expect_within_limit(request: web.Request) -> None:
    """``Expect: 100-continue``: a body over the limit gets 413 before it is sent."""
    limit = request.app[CONFIG].server.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response


async def _body_timed_out(request: web.Request) -> web.Response:
    """408 and close: a client that stalls in its body must not hold the connection."""
    response = web.Response(status=408, text="request body not received in time\n")
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # no lingering read of the rest of the body
    return response


async def _not_allowed(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _stale_indexes(app: web.Application) -> dict[str, float]:
    """CA name -> seconds its index file has not been taken up, past the bound."""
    bound = app[CONFIG].server.index_stale_after
    stale = {name: source.stale_for() for name, source in app[SOURCES].items()}
    return {name: seconds for name, seconds in stale.items() if seconds > bound}


def _signers_out_of_validity(app: web.Application) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    return [issuer.name for issuer in app[SERVICE].issuers if not issuer.signer_valid_at(now)]


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    problems = [
        f"index {name}: not loaded"
        for name, source in app[SOURCES].items()
        if source.snapshot is None
    ]
    problems += [
        f"index {name}: not taken up for {seconds:.0f} s ({app[SOURCES][name].last_error})"
        for name, seconds in _stale_indexes(app).items()
    ]
    problems += [
        f"CA {name}: its signing certificate is not valid now (answers are tryLater)"
        for name in _signers_out_of_validity(app)
    ]
    token = app[TOKEN]
    if not token.up:
        problems.append(f"token: {token.last_error or 'not connected'}")
    if problems:
        return web.Response(status=503, text="\n".join(problems) + "\n")
    return web.Response(text="ready\n")


async def _watch_indexes(app: web.Application, wake: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), WATCH_INTERVAL)
        force = wake.is_set()
        wake.clear()
        for source in app[SOURCES].values():
            try:
                await loop.run_in_executor(None, functools.partial(source.check, force=force))
            except Exception:  # keep watching whatever one check did
                log.exception("index check for %s failed", source.path)
        stale = _stale_indexes(app)
        invalid = _signers_out_of_validity(app)
        for name in app[SOURCES]:
            app[METRICS].index_stale.labels(name).set(1 if name in stale else 0)
            app[METRICS].signer_ok.labels(name).set(0 if name in invalid else 1)


async def _watch_token(app: web.Application) -> None:
    token = app[TOKEN]
    refused = app[METRICS].login_refused
    while True:
        await asyncio.sleep(1.0 if not token.up else PROBE_INTERVAL)
        refused.set(int(token.gate is not None and token.gate.refused() is not None))
        try:
            await token.sign(next(iter(token.keys)), _PROBE)
        except HsmOcspError:
            pass
        except Exception:  # out of descriptors, say: keep watching, the token comes back
            log.exception("token probe failed")


def issuers_of(config: Config) -> list[Issuer]:
    """Each CA as the service sees it, with every certificate that may sign for it."""
    return [
        Issuer.from_certificates(
            ca.name,
            ca.certificate,
            [cert for _, cert in ca.responder_certificates] or None,
            ca.validity,
            unknown_as_revoked=ca.unknown_serials == "revoked",
        )
        for ca in config.cas
    ]


def create_app(
    config: Config,
    *,
    token: TokenProcess | None = None,
    handle_signals: bool = False,
    pin: str | None = None,
    login_gate: LoginGate | None = None,
) -> web.Application:
    """The application for one process; the token opens when the app starts."""
    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[CONFIG] = config
    app[SOURCES] = {
        ca.name: IndexSource(ca.name, ca.index, max_bytes=ca.max_index_bytes) for ca in config.cas
    }
    app[TOKEN] = token if token is not None else build_token(config, pin, login_gate)
    issuers = issuers_of(config)
    sources = app[SOURCES]
    metrics = app[METRICS] = _metrics(config, sources, app[TOKEN])
    app[SERVICE] = OCSPService(
        issuers,
        lambda name: sources[name].snapshot,
        app[TOKEN],
        max_cert_ids=config.server.max_cert_ids,
        nonce=config.server.nonce,
        cache_entries=config.server.cache_entries,
        cache_bytes=config.server.cache_bytes,
        max_pending_signatures=config.server.max_pending_signatures,
        events=metrics,
    )
    app[RUNNING] = {"config": config}  # what a reload replaces (the app itself is frozen)
    app.cleanup_ctx.append(_lifecycle(handle_signals))
    # Server: hsm-ocsp, not Python's and aiohttp's versions for a scanner to match. aiohttp
    # fills the header from this module constant; setting it once costs nothing a
    # request (an on_response_prepare signal cost ~8 % of a cached answer's throughput).
    setattr(web_response, "SERVER_SOFTWARE", SERVER_SOFTWARE)  # noqa: B010  (not exported)
    handler = OCSPHandler(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    not_ocsp = ["/healthz", "/readyz"]
    if config.server.metrics_listen is None:  # else serve.py listens there
        app.router.add_get(METRICS_PATH, metrics.handle)
        not_ocsp.append(METRICS_PATH)
    # [\s\S], not ".": a path with a decoded newline (%0A) must reach the handler too
    # and be answered malformedRequest, not 404. Every request to an OCSP path is
    # timed and counted, a method other than GET, HEAD or POST too (405).
    ocsp_path = r"/{tail:[\s\S]*}"
    app.router.add_get(ocsp_path, metrics.observe(handler.get))
    app.router.add_post(
        ocsp_path, metrics.observe(handler.post), expect_handler=_expect_within_limit
    )
    app.router.add_route("*", ocsp_path, metrics.observe(_not_allowed, not_ocsp))
    return app


def _metrics(config: Config, sources: dict[str, IndexSource], token: TokenProcess) -> Metrics:
    """Metrics of this process, fed by the token and index hooks."""
    metrics = Metrics()
    for ca in config.cas:
        signer = max(
            (c for _, c in ca.responder_certificates or [(None, ca.certificate)]),
            key=lambda c: c.not_valid_after_utc,
        )  # the last to expire: the alert is on when the CA runs out of them
        metrics.add_ca(ca.name, signer.not_valid_after_utc)
        sources[ca.name].on_reload = metrics.index_reloaded(ca.name)
        sources[ca.name].on_error = metrics.index_failed(ca.name)
    token.on_state_change = metrics.token_state([ca.name for ca in config.cas])
    token.on_sign = metrics.token_signed
    token.on_state_change(token.up)
    return metrics


async def _reload(app: web.Application, wake: asyncio.Event) -> None:
    """SIGHUP: re-read the configuration and the indexes; a lone worker also lets a
    refused login be tried again (with several workers the parent, which owns the
    login gate, does that). Files are read off the event loop."""
    gate = app[TOKEN].gate
    if gate is not None and app[CONFIG].server.workers == 1:
        gate.reset()
    running = app[RUNNING]["config"]
    read = functools.partial(read_reloadable, running, quiet=running.server.workers > 1)
    new = await asyncio.get_running_loop().run_in_executor(None, read)
    if new is not None and app[RUNNING]["config"] is running:  # no newer reload won
        try:
            await take_keys(app[TOKEN], new)  # a new key: found and proven first
        except HsmOcspError as exc:  # with several workers the supervisor said it
            level = logging.DEBUG if running.server.workers > 1 else logging.ERROR
            log.log(level, "reload refused, the running configuration stays: %s", exc)
        else:
            app[RUNNING]["config"] = new
            app[SERVICE].replace_issuers(issuers_of(new))
            log.info("configuration reloaded from %s", new.path)
    wake.set()


def _lifecycle(handle_signals: bool):  # type: ignore[no-untyped-def]
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        for source in app[SOURCES].values():
            await loop.run_in_executor(None, source.load)
        token = app[TOKEN]
        try:
            await prove_keys(token, app[CONFIG])
        except BaseException:
            await token.aclose()
            raise
        wake = asyncio.Event()
        reloads: set[asyncio.Task[None]] = set()  # held until done, never collected midway

        def on_sighup() -> None:
            task = asyncio.create_task(_reload(app, wake))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        if handle_signals:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        tasks = [
            asyncio.create_task(_watch_indexes(app, wake)),
            asyncio.create_task(_watch_token(app)),
        ]
        log.info("worker %d ready", os.getpid())
        try:
            yield
        finally:
            if handle_signals:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in [*tasks, *reloads]:
                task.cancel()
            await asyncio.gather(*tasks, *reloads, return_exceptions=True)
            await token.aclose()

    return lifecycle
