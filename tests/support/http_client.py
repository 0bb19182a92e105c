"""Plain HTTP to a responder under test: a status and a body, errors included."""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request

from cryptography.x509 import ocsp

UNKNOWN_SERIAL = 0x7E57AB1E  # a serial no test CA issues


def http(
    url: str, data: bytes | None = None, method: str | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    """The status and body of a request (a POST of an OCSP request when ``data``)."""
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/ocsp-request")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answer_of(url: str, body: bytes, timeout: float = 10) -> ocsp.OCSPResponse:
    """The OCSP answer to ``body`` POSTed to ``url``, decoded."""
    return ocsp.load_der_ocsp_response(post_ocsp(url, body, timeout))


def post_ocsp(url: str, body: bytes, timeout: float = 10) -> bytes:
    """The body of the answer to an OCSP POST; HTTPError for any status but 200."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/ocsp-request"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


def get_path(der: bytes) -> str:
    return urllib.parse.quote(base64.b64encode(der).decode(), safe="")
