"""The OCSP routes: GET and POST, their caching headers, and what is refused."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import time
from urllib.parse import unquote

from aiohttp import ClientPayloadError, web

from ..core.reply import Reply
from ..core.reply_headers import ERROR_HEADERS
from .app_keys import CA_NAME, REPLY
from .app_state import CONFIG, SERVICE

OCSP_RESPONSE = "application/ocsp-response"


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
    # Bounds of the per-handler memo below (entries, and the longest GET path kept).
    MEMO_ENTRIES = 1024
    MEMO_PATH = 1024

    def __init__(self, app: web.Application) -> None:
        self.app = app
        # raw GET path -> (CA name, DER request or None): repeated GETs skip the parsing
        self._get_paths: dict[str, tuple[str | None, bytes | None]] = {}

    def _reply(self, request: web.Request, reply: Reply, *, cacheable: bool) -> web.Response:
        reply_headers = reply.headers()
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
        request[CA_NAME] = ca_name or ""  # always set: a missing key costs the log an exception
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
        request[CA_NAME] = ca_name or ""
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
    response = web.Response(status=status, text=text + "\n", headers=ERROR_HEADERS)
    response.force_close()
    return response


async def expect_within_limit(request: web.Request) -> None:
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


async def not_allowed(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])
