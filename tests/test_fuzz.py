"""Hostile input over the whole HTTP path never gets a 5xx or a wrong answer, in
every role: one process, a worker with its producer, a keyless edge.

The cases and the oracle are ``scripts/fuzz.py`` (which runs a million against a
real server); here 10,000 of them run against the application in-process and a few
thousand against each role as real processes, with fixed seeds so that a failure
replays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from cryptography import x509
from pytest_aiohttp import AiohttpClient, AiohttpServer

from hsm_ocsp.config.file import load_config
from hsm_ocsp.core.errors import MalformedRequestError
from hsm_ocsp.core.request import decode_request
from hsm_ocsp.server.app import create_app

from .support import fuzz
from .support.ca import build_ca, write_config
from .support.fleet import edge_host, filled, signing_host
from .support.fuzz import CERT_ID, wrap_request
from .support.redis import RedisServer
from .support.server import free_port, start_server
from .support.softhsm import SoftHSM

CASES = 10_000
SEED = 11  # among its mutations: negative and over-long serials (HTTP 500 before)


@pytest.fixture
def fuzz_target(tmp_path: Path, softhsm: SoftHSM) -> tuple[Path, fuzz.Target]:
    setup = build_ca(tmp_path / "ca", softhsm)
    # With a store: answers for serials the store can key are shared, the rest never.
    state = f'state_dir = "{tmp_path / "state"}"'
    config = write_config(tmp_path / "config.toml", {"root": setup}, server=state)
    target = fuzz.Target.from_config(config)
    assert target.signer == x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())  # type: ignore[union-attr]
    return config, target


@pytest.mark.slow
async def test_fuzz_whole_http_path_never_5xx_and_every_answer_right(
    fuzz_target: tuple[Path, fuzz.Target], aiohttp_server: AiohttpServer
) -> None:
    config, target = fuzz_target
    server = await aiohttp_server(create_app(load_config(config)))
    started = time.monotonic()
    report = await fuzz.run(
        str(server.make_url("/")),
        target,
        count=CASES,
        seed=SEED,
        concurrency=4,
    )
    seconds = time.monotonic() - started
    print(report.summary(), f"{seconds:.1f} s")
    assert not report.failures, "\n".join(report.failures[:20])
    assert report.done >= CASES
    # The run reached every kind of case and every answer the oracle knows.
    assert set(report.kinds) == set(fuzz.KINDS)
    assert set(report.answers) >= {
        "SUCCESSFUL",
        "MALFORMED_REQUEST",
        "UNAUTHORIZED",
        "HTTP 400",
        "HTTP 405",
        "HTTP 413",
    }


ROLE_CASES = 3_000
KINDS = {"post", "get", "mutated", "nonce", "cert-ids", "bad-http", "huge", "foreign-ca"}


def _role_run(url: str, target: fuzz.Target, seed: int) -> fuzz.Report:
    report = asyncio.run(fuzz.run(url, target, count=ROLE_CASES, seed=seed, concurrency=4))
    print(report.summary())
    assert not report.failures, "\n".join(report.failures[:20])
    assert report.done >= ROLE_CASES and set(report.kinds) >= KINDS
    return report


@pytest.mark.slow
def test_fuzz_a_worker_with_its_producer_never_5xx_and_every_answer_right(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """Two workers and their producer as ``serve`` runs them: a miss, a nonce and several
    CertIDs cross the link to the producer (decoded parts, not bytes)."""
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    state = f'workers = 2\nstate_dir = "{tmp_path / "state"}"'
    config = write_config(tmp_path / "host.toml", {"root": setup}, port=port, server=state)
    server = start_server(config, port, tmp_path / "host.log")
    try:
        report = _role_run(server.url, fuzz.Target.from_config(config), seed=12)
        assert report.answers["SUCCESSFUL"] and report.answers["MALFORMED_REQUEST"]
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


@pytest.mark.slow
def test_fuzz_an_edge_never_5xx_and_every_answer_right(tmp_path: Path, softhsm: SoftHSM) -> None:
    """A keyless edge serving what a signing host published to Redis: what it lacks is
    tryLater, what it answers is the signing host's signed answer, right."""
    setup = build_ca(tmp_path / "ca", softhsm)
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    host = edge = None
    try:
        host = signing_host(tmp_path, setup, redis_server.url, "host")
        filled(host, setup)
        edge = edge_host(tmp_path, setup, redis_server.url)
        target = dataclasses.replace(fuzz.Target.from_config(tmp_path / "host.toml"), edge=True)
        report = _role_run(edge.url, target, seed=13)
        # It served stored answers, and refused (not guessed) what it could not sign.
        assert report.answers["SUCCESSFUL"] and report.answers["TRY_LATER"]
        assert "Traceback" not in edge.log.read_text()
    finally:
        for server in (edge, host):
            if server is not None:
                server.stop()
        redis_server.stop()


def test_fuzz_oracle_rejects_a_wrong_answer(fuzz_target: tuple[Path, fuzz.Target]) -> None:
    """The oracle is not a rubber stamp: a 5xx, a wrong status or a tryLater fail it."""
    _config, target = fuzz_target
    case = fuzz.Case("post", b"", fuzz.MALFORMED)
    ok_headers = {"content-type": fuzz.OCSP_TYPE, "cache-control": "no-cache"}
    malformed = bytes.fromhex("30030a0101")
    fuzz.check(case, target, 200, ok_headers, malformed)
    with pytest.raises(AssertionError):
        fuzz.check(case, target, 500, ok_headers, malformed)
    with pytest.raises(AssertionError):
        fuzz.check(case, target, 200, ok_headers, bytes.fromhex("30030a0103"))  # tryLater
    with pytest.raises(AssertionError):
        fuzz.check(case, target, 200, {"content-type": fuzz.OCSP_TYPE}, malformed)  # cacheable
    try_later = bytes.fromhex("30030a0103")
    signed = fuzz.Case("post", b"", frozenset({fuzz.S.SUCCESSFUL}))
    with pytest.raises(AssertionError):  # a signing host must sign it
        fuzz.check(signed, target, 200, ok_headers, try_later)
    edge = dataclasses.replace(target, edge=True)  # an edge may not have it: tryLater
    fuzz.check(signed, edge, 200, ok_headers, try_later)
    with pytest.raises(AssertionError):  # but malformed stays malformed
        fuzz.check(case, edge, 200, ok_headers, try_later)


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("02021001", "0203001001"),  # serial with a leading zero
        ("02021001", "0281021001"),  # serial length in long form
        ("06052b0e03021a", "06052b0e03029a"),  # hash OID cut inside a subidentifier
        ("06052b0e03021a", "06062b0e0380021a"),  # hash OID subidentifier padded with 0x80
    ],
)
def test_cert_id_that_is_ber_not_der_is_malformed_not_echoed(good: str, bad: str) -> None:
    """The CertID is echoed byte for byte, so BER would make the response undecodable."""
    assert decode_request(wrap_request(CERT_ID)).cert_ids[0].der == CERT_ID
    body = CERT_ID[2:].replace(bytes.fromhex(good), bytes.fromhex(bad))
    ber = bytes([0x30, len(body)]) + body
    assert ber != CERT_ID
    with pytest.raises(MalformedRequestError):
        decode_request(wrap_request(ber))


def test_nonce_that_is_ber_not_der_is_malformed() -> None:
    def request(nonce_value: bytes) -> bytes:
        oid = bytes.fromhex("06092b0601050507300102")
        extension = fuzz._tlv(0x30, oid + fuzz._tlv(0x04, nonce_value))
        return wrap_request(CERT_ID, fuzz._tlv(0xA2, fuzz._tlv(0x30, extension)))

    assert decode_request(request(bytes.fromhex("0410") + b"x" * 16)).nonce is not None
    with pytest.raises(MalformedRequestError):
        decode_request(request(bytes.fromhex("048110") + b"x" * 16))


@pytest.mark.parametrize("path", ["/%0A", "/MEow%0AMEow", "/root/%0D%0A", "/%0a%2B%2F"])
async def test_get_path_with_a_newline_is_malformed_request_not_404(
    fuzz_target: tuple[Path, fuzz.Target], aiohttp_client: AiohttpClient, path: str
) -> None:
    """A decoded %0A in the path still reaches the OCSP handler (RFC 6960 §4.2.1)."""
    config, _target = fuzz_target
    client = await aiohttp_client(create_app(load_config(config)))
    answer = await client.get(path)
    assert answer.status == 200, path
    body = await answer.read()
    assert body == bytes.fromhex("30030a0101")  # malformedRequest, unsigned
    assert "no-cache" in answer.headers["Cache-Control"]
