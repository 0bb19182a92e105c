"""A fleet: a signing host (token, index) and a keyless edge (no
token, no index) share a real redis-server; each has its own state directory. The
edge serves what the signing host produced, takes up a revocation, rides out Redis
going away, and catches up when Redis comes back (empty) without a restart."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .support.ca import CASetup, build_ca, write_config
from .support.redis import RedisServer
from .support.scrape import metric
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import SoftHSM
from .support.waiting import until

pytestmark = pytest.mark.slow


def _ask(server: RunningServer, setup: CASetup, name: str) -> ocsp.OCSPResponse:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, setup.ca.certificate, hashes.SHA1())
    request = urllib.request.Request(
        server.url,
        data=builder.build().public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request", "Connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read())


def _status(server: RunningServer, setup: CASetup, name: str) -> object:
    answer = _ask(server, setup, name)
    if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return answer.response_status
    return answer.certificate_status


def _edge_config(path: Path, setup: CASetup, port: int, redis_url: str, state: Path) -> Path:
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = 2\nstate_dir = "{state}"\n\n'
        f'[store]\nredis = "{redis_url}"\n\n'
        f'[[ca]]\nname = "root"\ncertificate = "{setup.ca.cert_path}"\n'
        f'responder_certificate = "{setup.responder_cert}"\n'
    )  # no [token], no key, no index: an edge
    return path


def test_an_edge_serves_the_fleet_takes_up_revocations_and_rides_out_redis(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    entries = len(setup.ca.index.read_text().splitlines())
    signing_port, edge_port = free_port(), free_port()
    store = f'[store]\nredis = "{redis_server.url}"'
    signing_config = write_config(
        tmp_path / "signing.toml",
        {"root": setup},
        port=signing_port,
        server=f'workers = 2\nstate_dir = "{tmp_path / "signing"}"\n\n{store}',
    )
    signing = start_server(signing_config, signing_port, tmp_path / "signing.log")
    edge = None
    try:
        until(lambda: metric(signing, 'hsm_ocsp_signatures_total{reason="fill"}') >= 2 * entries)
        assert "pre-producing for root" in signing.log.read_text()
        edge_config = _edge_config(
            tmp_path / "edge.toml", setup, edge_port, redis_server.url, tmp_path / "edge"
        )
        edge = start_server(edge_config, edge_port, tmp_path / "edge.log")
        # The edge answers with the signing host's own signatures: copied, not signed.
        for name in ("good", "keycompromise", "expired"):
            here, there = _ask(edge, setup, name), _ask(signing, setup, name)
            assert here.certificate_status == there.certificate_status
            assert here.produced_at_utc == there.produced_at_utc
            assert here.signature == there.signature
        assert _status(edge, setup, "keycompromise") is ocsp.OCSPCertStatus.REVOKED
        assert not re.search(r"signer_child", edge.log.read_text())
        assert metric(edge, "hsm_ocsp_answers_signed_total") == 0

        # A revocation in the signing host's index reaches the edge.
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        seconds = until(lambda: _status(edge, setup, "good") is ocsp.OCSPCertStatus.REVOKED)
        print(f"revocation answered by the edge after {seconds:.1f} s")
        for _ in range(10):  # both edge workers, never the old good again
            assert _status(edge, setup, "good") is ocsp.OCSPCertStatus.REVOKED

        setup.certs["victim"] = setup.ca.issue("victim")
        until(lambda: _status(edge, setup, "victim") is ocsp.OCSPCertStatus.GOOD)

        # Redis gone: the edge keeps serving its copy.
        redis_server.kill()
        setup.certs["new"] = setup.ca.issue("new")  # produced while Redis is away
        setup.ca.revoke(setup.certs["victim"], "-crl_reason", "keyCompromise")  # and this
        until(lambda: _status(signing, setup, "new") is ocsp.OCSPCertStatus.GOOD)
        for _ in range(10):
            assert _status(edge, setup, "keycompromise") is ocsp.OCSPCertStatus.REVOKED
            assert _status(edge, setup, "good") is ocsp.OCSPCertStatus.REVOKED
        assert _status(edge, setup, "new") is ocsp.OCSPResponseStatus.TRY_LATER
        until(lambda: metric(edge, "hsm_ocsp_replication_connected") == 0)

        # Redis back, empty: the signing host publishes its store again, and the edge
        # catches up without a restart.
        redis_server.start()
        until(lambda: _status(edge, setup, "new") is ocsp.OCSPCertStatus.GOOD, timeout=30)
        assert _status(edge, setup, "good") is ocsp.OCSPCertStatus.REVOKED

        def victim_revoked() -> bool:
            """Revoked while Redis was away: tryLater while its new answers are on
            their way, never the good the edge had copied."""
            status = _status(edge, setup, "victim")
            assert status is not ocsp.OCSPCertStatus.GOOD
            return status is ocsp.OCSPCertStatus.REVOKED

        until(victim_revoked, timeout=30)
        until(lambda: metric(edge, "hsm_ocsp_replication_connected") == 1)
        assert "Redis reachable again" in edge.log.read_text()
    finally:
        if edge is not None:
            edge.stop()
        signing.stop()


def test_two_signing_hosts_sharing_a_redis_sign_each_answer_once(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    """One holds the CA's lease and pre-produces for both; the other copies. One index
    change: one signature a CertID hash for the fleet, not one a host."""
    setup = build_ca(tmp_path / "ca", softhsm)
    entries = len(setup.ca.index.read_text().splitlines())
    hosts = []
    try:
        for name in ("a", "b"):
            port = free_port()
            config = write_config(
                tmp_path / f"{name}.toml",
                {"root": setup},
                port=port,
                server=f'workers = 2\nstate_dir = "{tmp_path / name}"\n\n'
                f'[store]\nredis = "{redis_server.url}"',
            )
            hosts.append(start_server(config, port, tmp_path / f"{name}.log"))

        def signed(reason: str = "") -> float:
            name = "hsm_ocsp_answers_signed_total"
            if reason:
                name = f'hsm_ocsp_signatures_total{{reason="{reason}"}}'
            return sum(metric(host, name) for host in hosts)

        until(lambda: signed("fill") >= 2 * entries)
        time.sleep(2)  # nothing more comes: the other host did not fill too
        assert signed("fill") == 2 * entries
        leaders = [h for h in hosts if "pre-producing for root" in h.log.read_text()]
        assert len(leaders) == 1
        for _ in range(5):  # both hosts, both workers each: from their stores
            for host in hosts:
                assert _status(host, setup, "good") is ocsp.OCSPCertStatus.GOOD
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "superseded")
        until(lambda: _status(leaders[0], setup, "good") is ocsp.OCSPCertStatus.REVOKED)
        time.sleep(2.5)  # both hosts have taken their index up
        for _ in range(5):
            for host in hosts:
                assert _status(host, setup, "good") is ocsp.OCSPCertStatus.REVOKED
        # SHA-1 and SHA-256, once for the fleet: by the lease holder as changes, or for
        # the client that asked it first (live); never again on the other host.
        assert signed("change") + signed("live") == 2 and signed("change") >= 1
        assert metric(hosts[hosts.index(leaders[0]) - 1], "hsm_ocsp_answers_signed_total") == 0
        assert signed() == 2 * entries + 2
    finally:
        for host in hosts:
            host.stop()
