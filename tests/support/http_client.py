"""Plain HTTP to a responder under test: a status and a body, errors included."""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request

UNKNOWN_SERIAL = 0x7E57AB1E  # a serial no test CA issues


def http(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/ocsp-request")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_path(der: bytes) -> str:
    return urllib.parse.quote(base64.b64encode(der).decode(), safe="")
