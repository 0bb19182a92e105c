"""A CertID's serial is any INTEGER a client sends: negative, zero-length, longer than
20 octets or than the store's keys allow. Every role answers it as RFC 6960 says
(``unknown``: no index holds it; or ``malformedRequest``), never with an HTTP 5xx:
one process, a worker with its producer, an edge (which cannot sign: tryLater)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from hsm_ocsp.core.shared_answers import keyable, serial_prefix

from .support import fuzz
from .support.ca import CASetup, build_ca, write_config
from .support.http_client import http
from .support.redis import RedisServer
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import SoftHSM

SERIALS = [-1, -(1 << 159), 1 << 167, 1 << 2100, -(1 << 2100)]  # 21 and 263 octets


def test_a_serial_without_a_store_key_is_said_so_not_overflowed() -> None:
    assert keyable(0) and keyable(0x1001) and keyable((1 << (8 * 255)) - 1)
    for serial in (-1, -(1 << 64), 1 << (8 * 255)):
        assert not keyable(serial)
        with pytest.raises(ValueError):
            serial_prefix("root", serial)


def _requests(setup: CASetup) -> Iterator[tuple[str, bytes]]:
    target = fuzz.Target.from_config(setup.ca.dir / "fuzz.toml")
    for serial in SERIALS:
        yield f"serial {serial:#x}"[:40], fuzz.ocsp_request([fuzz.cert_id(target, serial)])
        yield (
            f"serial {serial:#x} sha1"[:40],
            fuzz.ocsp_request([fuzz.cert_id(target, serial, "sha1")]),
        )
    # A zero-length INTEGER, by hand: the builder never makes one.
    zero = fuzz.cert_id(target, 1).replace(b"\x02\x01\x01", b"\x02\x00")
    yield "zero-length serial", fuzz.ocsp_request([zero[:1] + bytes([zero[1] - 1]) + zero[2:]])


def _check_all(server: RunningServer, setup: CASetup, allowed: set[object]) -> None:
    for what, body in _requests(setup):
        for _ in range(3):  # both workers, and the answer stored (or not) the first time
            status, answer = http(server.url, body)
            assert status == 200, (what, status, server.log.read_text()[-3000:])
            parsed = ocsp.load_der_ocsp_response(answer)
            if parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                got: object = parsed.certificate_status
            else:
                got = parsed.response_status
            assert got in allowed, (what, got)
    assert "Traceback" not in server.log.read_text()


@pytest.fixture
def setup(tmp_path: Path, softhsm: SoftHSM) -> CASetup:
    made = build_ca(tmp_path / "ca", softhsm)
    write_config(made.ca.dir / "fuzz.toml", {"root": made})
    return made


SIGNED: set[object] = {ocsp.OCSPCertStatus.UNKNOWN, ocsp.OCSPResponseStatus.MALFORMED_REQUEST}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_odd_serials_are_answered_unknown_by_a_signing_host(
    tmp_path: Path, setup: CASetup, workers: int
) -> None:
    port = free_port()
    state = f'workers = {workers}\nstate_dir = "{tmp_path / "state"}"'
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=port, server=state)
    server = start_server(config, port, tmp_path / "server.log")
    try:
        _check_all(server, setup, SIGNED)
    finally:
        server.stop()


@pytest.mark.slow
def test_odd_serials_are_no_5xx_on_an_edge(tmp_path: Path, setup: CASetup) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = 2\nstate_dir = "{tmp_path / "edge"}"\n'
        f'[store]\nredis = "{redis_server.url}"\n'
        f'[[ca]]\nname = "root"\ncertificate = "{setup.ca.cert_path}"\n'
        f'responder_certificate = "{setup.responder_cert}"\n'
    )
    server = start_server(config, port, tmp_path / "edge.log", ready=False)
    try:  # nothing can be signed here: tryLater, or the edge's own malformedRequest
        _check_all(server, setup, {ocsp.OCSPResponseStatus.TRY_LATER} | SIGNED)
    finally:
        server.stop()
        redis_server.stop()
