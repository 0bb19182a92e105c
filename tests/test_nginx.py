"""nginx as the RFC 9919 caching front: deploy/nginx/hsm-ocsp-cache.conf, run for real.

Debian's nginx runs on 127.0.0.1 as a foreground process with its prefix, pid, logs
and temp paths under tmp_path, in front of a real ``hsm-ocsp serve`` process.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from .support import ROOT
from .support.ca import CASetup, build_ca
from .support.ca import write_config as write_responder_config
from .support.nginx import Nginx, start_nginx
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import SoftHSM

CACHE_CONF = ROOT / "deploy" / "nginx" / "hsm-ocsp-cache.conf"
VALIDITY_SECONDS = 8


def cache_front_config(cache_dir: Path, responder_port: int, listen_port: int) -> str:
    """The shipped file with its three CHANGE lines pointed at this test."""
    text = CACHE_CONF.read_text()
    replacements = {
        "proxy_cache_path /var/cache/nginx/hsm-ocsp ": f"proxy_cache_path {cache_dir} ",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{responder_port};",
        "listen 80;": f"listen 127.0.0.1:{listen_port};",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{CACHE_CONF.name} no longer has {old!r} exactly once"
        text = text.replace(old, new)
    return text


@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def cache_status(self) -> str | None:
        return self.headers.get("X-Cache-Status")


def fetch(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def ocsp_request(cert_path: Path, issuer: x509.Certificate, nonce: bytes | None = None) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_path(der: bytes) -> str:
    return "/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def cert_status(body: bytes) -> ocsp.OCSPCertStatus:
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return response.certificate_status


def max_age(reply: Reply) -> int:
    found = re.search(r"max-age=(\d+)", reply.headers.get("Cache-Control", ""))
    assert found, f"no max-age in {reply.headers.get('Cache-Control')!r}"
    return int(found.group(1))


@dataclasses.dataclass
class Front:
    setup: CASetup
    responder: RunningServer
    nginx: Nginx


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHSM) -> Iterator[Front]:
    base = tmp_path_factory.mktemp("nginx-front")
    setup = build_ca(base / "ca", softhsm)
    responder_port, nginx_port = free_port(), free_port()
    config = write_responder_config(
        base / "hsm-ocsp.toml",
        {"root": setup},
        port=responder_port,
        validity=f'"{VALIDITY_SECONDS}s"',
    )
    responder = start_server(config, responder_port, base / "hsm-ocsp.log")
    try:
        nginx = start_nginx(
            base / "nginx",
            cache_front_config(base / "cache", responder_port, nginx_port),
            nginx_port,
        )
    except BaseException:
        responder.stop()
        raise
    yield Front(setup, responder, nginx)
    nginx.stop()
    responder.stop()


def test_second_identical_get_is_a_cache_hit_with_the_responders_headers(front: Front) -> None:
    path = get_path(ocsp_request(front.setup.certs["good"], front.setup.ca.certificate))
    first = fetch(front.nginx.port, "GET", path)
    second = fetch(front.nginx.port, "GET", path)

    assert first.status == second.status == 200
    assert first.cache_status == "MISS"
    assert second.cache_status == "HIT"
    assert second.body == first.body
    assert cert_status(second.body) == ocsp.OCSPCertStatus.GOOD
    for name in ("Content-Type", "ETag", "Last-Modified", "Expires", "Cache-Control"):
        assert first.headers.get(name), f"responder sent no {name}"
        assert second.headers.get(name) == first.headers.get(name), name
    assert "public" in first.headers["Cache-Control"]
    assert 0 < max_age(first) <= VALIDITY_SECONDS

    # nginx answers a revalidation from its cache with the responder's ETag.
    revalidated = fetch(
        front.nginx.port, "GET", path, headers={"If-None-Match": first.headers["ETag"]}
    )
    assert revalidated.status == 304
    assert revalidated.cache_status == "HIT"


@pytest.mark.slow
def test_cached_answer_changes_no_later_than_max_age_after_revocation(front: Front) -> None:
    setup = front.setup
    leaf = setup.ca.issue("revoked-behind-cache")
    # The responder notices the new index line within its reload interval.
    time.sleep(1.5)
    path = get_path(ocsp_request(leaf, setup.ca.certificate))
    first = fetch(front.nginx.port, "GET", path)
    received = time.monotonic()
    assert cert_status(first.body) == ocsp.OCSPCertStatus.GOOD
    assert first.cache_status == "MISS"
    age_limit = max_age(first)
    assert age_limit >= 2, "the responder's max-age is too short to show caching"

    setup.ca.revoke(leaf, "-crl_reason", "keyCompromise")
    revoked_at = time.monotonic()
    still_cached = fetch(front.nginx.port, "GET", path)
    if time.monotonic() < received + age_limit - 1:
        # Within max-age the front may (and does) keep serving what it has.
        assert still_cached.cache_status == "HIT"
        assert cert_status(still_cached.body) == ocsp.OCSPCertStatus.GOOD

    # The responder itself reloads within about a second; nginx keeps the old
    # answer at most max-age (counted in whole seconds, hence + 1).
    deadline = max(received + age_limit, revoked_at + 1.0) + 1.0
    seen = None
    while time.monotonic() < deadline + 0.5:
        reply = fetch(front.nginx.port, "GET", path)
        if cert_status(reply.body) == ocsp.OCSPCertStatus.REVOKED:
            seen = time.monotonic()
            break
        time.sleep(0.2)
    assert seen is not None, f"still good {deadline + 0.5 - received:.1f} s after caching"
    assert seen <= deadline + 0.3
    assert reply.cache_status != "HIT"
    assert (
        ocsp.load_der_ocsp_response(reply.body).revocation_reason == x509.ReasonFlags.key_compromise
    )


def test_post_passes_through_the_cache(front: Front) -> None:
    issuer = front.setup.ca.certificate
    cert = front.setup.certs["good"]
    headers = {"Content-Type": "application/ocsp-request"}
    replies = []
    for nonce in (os.urandom(16), os.urandom(16)):
        reply = fetch(front.nginx.port, "POST", "/", ocsp_request(cert, issuer, nonce), headers)
        assert reply.status == 200
        assert reply.cache_status in (None, "")  # the cache was not consulted
        response = ocsp.load_der_ocsp_response(reply.body)
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert echoed == nonce, "a POST answer came from somewhere other than the responder"
        replies.append(reply)
    assert replies[0].body != replies[1].body


def test_error_responses_are_not_cached(front: Front) -> None:
    path = "/not-an-ocsp-request%21"
    replies = [fetch(front.nginx.port, "GET", path) for _ in range(2)]
    for reply in replies:
        assert reply.status == 200
        response = ocsp.load_der_ocsp_response(reply.body)
        assert response.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        assert reply.headers["Cache-Control"] == "no-cache"
        assert reply.cache_status == "MISS"
    # nginx writes the cache key into every cache file: none holds this one.
    cached = [
        p.read_bytes() for p in (front.nginx.prefix.parent / "cache").rglob("*") if p.is_file()
    ]
    assert not any(b"not-an-ocsp-request" in data for data in cached)


def test_metrics_are_not_published_through_the_front(front: Front) -> None:
    assert fetch(front.nginx.port, "GET", "/metrics").status == 404
    assert fetch(front.nginx.port, "GET", "/healthz").status == 200
