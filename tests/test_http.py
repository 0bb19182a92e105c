"""HTTP behaviour (RFC 6960 App. A, RFC 9919 §5-6) against a real SoftHSM token."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp as x509_ocsp

from hsm_ocsp.config.file import load_config
from hsm_ocsp.server.app import create_app

from .support.ca import CASetup, build_ca, write_config
from .support.requests import build_request
from .support.softhsm import SoftHSM

Client = Any


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> Callable[..., Awaitable[Client]]:
    async def make(setups: dict[str, CASetup], **ca_extra: str) -> Client:
        config = write_config(tmp_path / "hsm-ocsp.toml", setups, **ca_extra)  # type: ignore[arg-type]
        return await aiohttp_client(create_app(load_config(config)))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]], ca_setup: CASetup) -> Client:
    return await make_client({"root": ca_setup})


def request_for(setup: CASetup, name: str, **kw: Any) -> bytes:
    return build_request([(setup.ca.certificate, setup.serial(name))], **kw)


async def post(client: Client, der: bytes, path: str = "/") -> x509_ocsp.OCSPResponse:
    resp = await client.post(path, data=der, headers={"Content-Type": "application/ocsp-request"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/ocsp-response"
    return x509_ocsp.load_der_ocsp_response(await resp.read())


async def test_post_answers_good_and_revoked(client: Client, ca_setup: CASetup) -> None:
    good = await post(client, request_for(ca_setup, "good"))
    assert good.certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    revoked = await post(client, request_for(ca_setup, "keycompromise"))
    assert revoked.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED


async def test_delegated_responder_certificate_is_included(
    client: Client, ca_setup: CASetup
) -> None:
    resp = await post(client, request_for(ca_setup, "good"))
    assert ca_setup.responder_cert is not None
    assert [c.serial_number for c in resp.certificates] == [
        __import__("cryptography.x509", fromlist=["x"])
        .load_pem_x509_certificate(ca_setup.responder_cert.read_bytes())
        .serial_number
    ]


async def raw_get(client: Client, target: str) -> tuple[int, bytes]:
    """GET with the request-target sent exactly as given (no URL normalising)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def encodings(der: bytes) -> dict[str, str]:
    b64 = base64.b64encode(der).decode()
    return {
        "raw": "/" + b64,
        "url-encoded": "/" + quote(b64, safe=""),
        "double-slash": "//" + b64,
        "ca-path": "/root/" + quote(b64, safe=""),
        "no-padding": "/" + b64.rstrip("="),
    }


@pytest.mark.parametrize("form", ["raw", "url-encoded", "double-slash", "ca-path", "no-padding"])
async def test_get_forms_give_the_same_status_as_post(
    client: Client, ca_setup: CASetup, form: str
) -> None:
    for name, status in (
        ("good", x509_ocsp.OCSPCertStatus.GOOD),
        ("hold", x509_ocsp.OCSPCertStatus.REVOKED),
    ):
        # a nonce-less request has '+', '/' or '=' in base64 often enough; make sure
        der = request_for(ca_setup, name)
        code, body = await raw_get(client, encodings(der)[form])
        assert code == 200, body
        parsed = x509_ocsp.load_der_ocsp_response(body)
        assert parsed.certificate_status is status
        assert (await post(client, der)).certificate_status is status


async def test_url_encoding_of_plus_slash_and_equals_is_accepted(
    client: Client, ca_setup: CASetup
) -> None:
    # Find a request whose base64 has all three special characters.
    for nonce in range(2000):
        der = request_for(ca_setup, "good", nonce=nonce.to_bytes(2, "big") * 8)
        b64 = base64.b64encode(der).decode()
        if "+" in b64 and "/" in b64 and "=" in b64:
            break
    else:
        pytest.fail("no suitable request found")
    encoded = b64.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    resp = await client.get("/" + encoded)
    parsed = x509_ocsp.load_der_ocsp_response(await resp.read())
    assert parsed.certificate_status is x509_ocsp.OCSPCertStatus.GOOD


async def test_get_carries_rfc9919_cache_headers(client: Client, ca_setup: CASetup) -> None:
    der = request_for(ca_setup, "good")
    resp = await client.get("/" + quote(base64.b64encode(der).decode(), safe=""))
    body = await resp.read()
    parsed = x509_ocsp.load_der_ocsp_response(body)
    headers = resp.headers
    next_update = parsed.next_update_utc
    assert next_update is not None
    assert email.utils.parsedate_to_datetime(headers["Expires"]) == next_update
    assert email.utils.parsedate_to_datetime(headers["Last-Modified"]) == parsed.produced_at_utc
    assert headers["ETag"].startswith('"') and not headers["ETag"].startswith("W/")
    directives = [d.strip() for d in headers["Cache-Control"].split(",")]
    assert directives[1:] == ["public", "no-transform", "must-revalidate"]
    max_age = int(directives[0].removeprefix("max-age="))
    date = email.utils.parsedate_to_datetime(headers["Date"])
    assert 0 < max_age and date + dt.timedelta(seconds=max_age) <= next_update
    assert "Pragma" not in headers


async def test_if_none_match_gives_304_and_head_gives_headers(
    client: Client, ca_setup: CASetup
) -> None:
    path = "/" + quote(base64.b64encode(request_for(ca_setup, "good")).decode(), safe="")
    first = await client.get(path)
    etag = first.headers["ETag"]
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert await again.read() == b""
    head = await client.head(path)
    assert head.status == 200
    assert head.headers["ETag"] == etag
    assert head.headers["Content-Type"] == "application/ocsp-response"


async def test_malformed_get_and_post_are_not_cacheable(client: Client) -> None:
    for resp in (
        await client.get("/this-is-not-base64!"),
        await client.get("/" + base64.b64encode(b"not an ocsp request").decode()),
        await client.post("/", data=b"\x30\x00"),
    ):
        assert resp.status == 200
        assert await resp.read() == bytes.fromhex("30030a0101")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert "ETag" not in resp.headers and "Expires" not in resp.headers


async def test_body_over_the_limit_is_413(client: Client) -> None:
    resp = await client.post("/", data=b"\x30" * (10 * 1024 + 1))
    assert resp.status == 413


async def test_post_to_an_unknown_path_is_404(client: Client, ca_setup: CASetup) -> None:
    resp = await client.post("/no/such/place", data=request_for(ca_setup, "good"))
    assert resp.status == 404


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_several_cas_on_root_and_on_their_own_paths(
    make_client: Callable[..., Awaitable[Client]], tmp_path: Path, softhsm: SoftHSM
) -> None:
    first = build_ca(tmp_path / "one", softhsm, name="First CA")
    second = build_ca(tmp_path / "two", softhsm, name="Second CA", delegated=False)
    client = await make_client({"one": first, "two": second})
    for setup, path in ((first, "/one/"), (second, "/two/")):
        for url in ("/", path):
            resp = await post(client, request_for(setup, "keycompromise"), url)
            assert resp.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    # The second CA signs with its own key: verify against the CA certificate, which a
    # root's answers carry by default (ca.include_ca_certificate = "auto": FreeRADIUS
    # looks for the signer among the answer's certificates only).
    own = await post(client, request_for(second, "good"))
    assert own.certificates == [second.ca.certificate]
    public = second.ca.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(own.signature, own.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    # A CA's path does not answer for the other CA.
    wrong = await client.post("/two/", data=request_for(first, "good"))
    assert await wrong.read() == bytes.fromhex("30030a0106")  # unauthorized


@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("ec-p256", {}),
        ("ec-p384", {}),
        ("rsa-2048", {}),
        ("rsa-2048", {"rsa_padding": '"pss"', "signature_hash": '"sha384"'}),
        ("rsa-3072", {"signature_hash": '"sha512"'}),
        ("ed25519", {}),
    ],
)
async def test_every_key_type_signs_verifiable_responses(
    make_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    softhsm: SoftHSM,
    algorithm: str,
    extra: dict[str, str],
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm, algorithm=algorithm)
    client = await make_client({"root": setup}, **extra)
    resp = await post(client, request_for(setup, "good", nonce=b"n" * 16))
    assert resp.certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    key = resp.certificates[0].public_key()
    data, sig = resp.tbs_response_bytes, resp.signature
    if isinstance(key, ec.EllipticCurvePublicKey):
        want = hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()
        assert resp.signature_hash_algorithm is not None
        assert resp.signature_hash_algorithm.name == want.name
        key.verify(sig, data, ec.ECDSA(want))
    elif isinstance(key, rsa.RSAPublicKey):
        names = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
        algo = names[extra.get("signature_hash", '"sha256"').strip('"')]
        if "rsa_padding" in extra:
            # cryptography does not parse RSASSA-PSS OCSP signatures; check the bytes.
            assert resp.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
            key.verify(sig, data, padding.PSS(padding.MGF1(algo), algo.digest_size), algo)
        else:
            assert resp.signature_hash_algorithm is not None
            assert resp.signature_hash_algorithm.name == algo.name
            key.verify(sig, data, padding.PKCS1v15(), algo)
    else:
        assert isinstance(key, ed25519.Ed25519PublicKey)
        key.verify(sig, data)
