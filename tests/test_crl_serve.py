"""A CA served from its CRLs by a real ``hsm-ocsp serve`` (two workers and their
producer), the CRLs published by nginx as a CA's web server would: statuses, a
revocation taken up, every CRL that does not deserve trust refused with the revoked
serials still revoked, and a CRL past its nextUpdate."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .support.ca import CASetup, build_ca
from .support.crls import NOW, Entry, make_crl
from .support.http_client import post_ocsp
from .support.nginx import Nginx, start_nginx
from .support.redis import RedisServer
from .support.requests import build_request
from .support.scrape import labelled, metrics_of
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import MODULE, SoftHSM
from .support.waiting import until
from .support.watch import request_for, status_of

REVOKED = ("revoked", "keycompromise", "superseded", "hold", "keytime", "cakeytime")


@dataclasses.dataclass
class CrlWorld:
    setup: CASetup
    www: Path
    nginx: Nginx
    directory: Path

    @property
    def crl(self) -> Path:
        return self.www / "ca.crl"

    @property
    def crl_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.port}/ca.crl"

    def publish(self, *options: str) -> bytes:
        """``openssl ca -gencrl`` onto the web server (renamed into place)."""
        return self.setup.ca.gencrl(self.crl, *options).read_bytes()

    def config(self, port: int, **extra: str) -> Path:
        setup = self.setup
        keys = {
            "crl_url": f'"{self.crl_url}"',
            "issued": f'"{setup.ca.dir / "newcerts"}"',
            "crl_fetch_interval": '"1s"',
            "validity": '"1h"',
            **extra,
        }
        lines = [
            "[server]",
            f'listen = "127.0.0.1:{port}"',
            "workers = 2",
            f'state_dir = "{self.directory / f"state-{port}"}"',
            "",
            "[token]",
            f'module = "{MODULE}"',
            "",
            "[[ca]]",
            'name = "crlca"',
            f'certificate = "{setup.ca.cert_path}"',
            f'key = "{setup.key_uri}"',
            f'responder_certificate = "{setup.responder_cert}"',
            *(f"{k} = {v}" for k, v in keys.items()),
        ]
        path = self.directory / f"crl-{port}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def world(tmp_path: Path, softhsm: SoftHSM) -> Iterator[CrlWorld]:
    setup = build_ca(tmp_path / "ca", softhsm)
    www = tmp_path / "www"
    www.mkdir()
    nginx = start_nginx(tmp_path / "nginx", _static(www, port := free_port()), port)
    try:
        yield CrlWorld(setup, www, nginx, tmp_path)
    finally:
        nginx.stop()


def _static(root: Path, port: int) -> str:
    return f"server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}"


def _answer(
    server: RunningServer, setup: CASetup, name: str, *, nonce: bool = False
) -> ocsp.OCSPResponse:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, setup.ca.certificate, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    request = urllib.request.Request(
        server.url,
        data=builder.build().public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read())


def _status(server: RunningServer, setup: CASetup, name: str, algorithm: str = "sha1") -> object:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    return status_of(server.url, request_for(cert, setup.ca.certificate, algorithm))


def test_statuses_revocation_and_untrusted_crls(world: CrlWorld, serve: object) -> None:
    setup = world.setup
    first = world.publish("-crlhours", "2")
    port = free_port()
    server = serve(world.config(port), port, world.directory / "server.log")  # type: ignore[operator]
    crl = x509.load_der_x509_crl(first)
    assert crl.next_update_utc is not None
    # Every status as the CRL and the issued certificates say, from either worker.
    for name in ("good", "expired"):
        for algorithm in ("sha1", "sha256"):
            assert _status(server, setup, name, algorithm) is ocsp.OCSPCertStatus.GOOD
    for name in REVOKED:
        assert _status(server, setup, name) is ocsp.OCSPCertStatus.REVOKED, name
    answer = _answer(server, setup, "keycompromise")
    assert answer.revocation_reason is x509.ReasonFlags.key_compromise
    answer = _answer(server, setup, "good")
    assert answer.next_update_utc is not None
    assert answer.next_update_utc <= crl.next_update_utc  # never past the CRL's
    never = status_of(server.url, _unknown_request(setup))
    assert never is ocsp.OCSPCertStatus.UNKNOWN
    metrics = metrics_of(server)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert labelled(metrics, "hsm_ocsp_crl_number", ca="crlca") == number
    assert labelled(metrics, "hsm_ocsp_crl_next_update_timestamp_seconds", ca="crlca") == (
        crl.next_update_utc.timestamp()
    )
    # A revocation: openssl ca -revoke, a new CRL on the web server, both hash forms.
    setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
    world.publish("-crlhours", "2")
    until(lambda: _status(server, setup, "good") is ocsp.OCSPCertStatus.REVOKED)
    assert _status(server, setup, "good", "sha256") is ocsp.OCSPCertStatus.REVOKED
    revoked: tuple[str, ...] = ("good", *REVOKED)
    # CRLs that do not deserve trust: the one before (an older number), one signed by
    # another key, one of another issuer, one from the future, an expired one, and a
    # newer, well signed one that drops every revoked serial. Each leaves every revoked
    # serial revoked.
    other = ec.generate_private_key(ec.SECP256R1())
    subject = setup.ca.certificate.subject
    faults = {
        "order": first,
        "signature": make_crl(other, subject, [], number=10**6),
        "issuer": make_crl(setup.ca.key, OTHER_CA, [], number=10**6),
        "time": make_crl(
            setup.ca.key,
            subject,
            [],
            number=10**6,
            this_update=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        ),
        "expired": make_crl(
            setup.ca.key,
            subject,
            [],
            number=10**6,
            this_update=NOW - dt.timedelta(days=3),
            next_update=dt.timedelta(days=1),
        ),
        "dropped": make_crl(
            setup.ca.key, subject, [Entry(12345)], number=10**6, this_update=dt.datetime.now(dt.UTC)
        ),
    }
    for label, der in faults.items():
        world.crl.write_bytes(der)
        if label != "dropped":
            counted = functools.partial(
                labelled, name="hsm_ocsp_crl_errors_total", ca="crlca", reason=label
            )
            until(lambda: (counted(metrics_of(server)) or 0) >= 1)  # noqa: B023 (called at once)
        else:
            until(lambda: labelled(metrics_of(server), "hsm_ocsp_crl_number", ca="crlca") == 10**6)
            # The hold the newer CRL no longer lists is released (RFC 5280): good again.
            until(lambda: _status(server, setup, "hold") is ocsp.OCSPCertStatus.GOOD)
            revoked = tuple(n for n in revoked if n != "hold")
        for name in revoked:
            for algorithm in ("sha1", "sha256"):
                assert _status(server, setup, name, algorithm) is ocsp.OCSPCertStatus.REVOKED, (
                    label,
                    name,
                    algorithm,
                )
    dropped = labelled(metrics_of(server), "hsm_ocsp_index_revocations_dropped", ca="crlca")
    assert dropped == len(revoked)  # kept by the revocation memory, and shown


def _unknown_request(setup: CASetup) -> bytes:
    """A serial the CA never issued."""
    return build_request([(setup.ca.certificate, 0x7FFFFFFF)])


def test_a_crl_past_its_next_update(world: CrlWorld, serve: object) -> None:
    """No answer outlives its CRL: while the CRL in service is past its nextUpdate,
    answers that need a signature are tryLater and /readyz fails; a new CRL ends it."""
    setup = world.setup
    world.publish("-crlsec", "8")
    port = free_port()
    server = serve(world.config(port), port, world.directory / "server.log")  # type: ignore[operator]
    answer = _answer(server, setup, "good", nonce=True)
    crl = x509.load_der_x509_crl(world.crl.read_bytes())
    assert answer.next_update_utc is not None and crl.next_update_utc is not None
    assert answer.next_update_utc <= crl.next_update_utc
    past = crl.next_update_utc + dt.timedelta(seconds=1)
    until(lambda: dt.datetime.now(dt.UTC) > past)
    late = _answer(server, setup, "good", nonce=True)
    assert late.response_status is ocsp.OCSPResponseStatus.TRY_LATER
    stored = _answer(server, setup, "revoked")  # the stored answer expired with its CRL
    assert stored.response_status is ocsp.OCSPResponseStatus.TRY_LATER
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(server.url.rstrip("/") + "/readyz", timeout=10)
    assert failed.value.code == 503
    assert b"past their nextUpdate" in failed.value.read()
    world.publish("-crlhours", "2")
    until(lambda: _status(server, setup, "good") is ocsp.OCSPCertStatus.GOOD)
    until(lambda: _ready(server))


def _ready(server: RunningServer) -> bool:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + "/readyz", timeout=10) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError:
        return False


def test_not_on_crl_good_and_check(world: CrlWorld, tmp_path: Path) -> None:
    """Without the issued serials, a serial the CRL does not list is good only when the
    operator says so; ``check`` says which mode each CA is in."""
    world.publish("-crlhours", "2")
    port = free_port()
    config = world.config(port)
    text = config.read_text().replace(f'issued = "{world.setup.ca.dir / "newcerts"}"\n', "")
    config.write_text(text)
    refused = _check(config)
    assert refused.returncode != 0 and "not_on_crl" in refused.stdout + refused.stderr
    config.write_text(text + 'not_on_crl = "good"\n')
    server = start_server(config, port, tmp_path / "good.log")
    try:
        never = status_of(server.url, _unknown_request(world.setup))
        assert never is ocsp.OCSPCertStatus.GOOD
        assert _status(server, world.setup, "revoked") is ocsp.OCSPCertStatus.REVOKED
        # Made-up serials are answered good, but signed and kept as unknown serials are:
        # in their own line, never in the store (a flood of them cannot fill it).
        until(lambda: (labelled(metrics_of(server), "hsm_ocsp_store_records") or 0) > 0)
        records = labelled(metrics_of(server), "hsm_ocsp_store_records")
        for serial in range(0x7000_0000, 0x7000_0000 + 20):
            made_up = build_request([(world.setup.ca.certificate, serial)])
            assert status_of(server.url, made_up) is ocsp.OCSPCertStatus.GOOD
        time.sleep(2.5)  # the store's metric is brought up to date every 2 s
        assert labelled(metrics_of(server), "hsm_ocsp_store_records") == records
        unknown = labelled(metrics_of(server), "hsm_ocsp_signatures_total", reason="unknown")
        assert unknown is not None and unknown >= 20
    finally:
        server.stop()
    said = _check(config)
    assert re.search(r"not on (its|the) CRL.*good", said.stdout), said.stdout


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_delta_partitioned_and_indirect_crls(tmp_path: Path, softhsm: SoftHSM) -> None:
    """Three CAs in one ``serve``, their CRLs on nginx in the shapes AD CS and EJBCA
    publish: a base CRL and its delta (a revocation added, a hold released), two
    partitions, and an indirect CRL of a CRL issuer the CA delegated."""
    from .support.crls import delegate_certificate, idp

    www = tmp_path / "www"
    www.mkdir()
    nginx = start_nginx(tmp_path / "nginx", _static(www, web := free_port()), web)
    url = f"http://127.0.0.1:{web}"
    setups = {n: build_ca(tmp_path / n, softhsm, name=f"{n} CA") for n in ("delta", "parts", "ind")}

    def serial(ca: str, name: str) -> int:
        return setups[ca].serial(name)

    key = {n: s.ca.key for n, s in setups.items()}
    subject = {n: s.ca.certificate.subject for n, s in setups.items()}
    hold, remove = x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl
    superseded = x509.ReasonFlags.superseded
    # AD CS: a base and a delta on it.
    (www / "base.crl").write_bytes(
        make_crl(
            key["delta"],
            subject["delta"],
            [Entry(serial("delta", "revoked")), Entry(serial("delta", "hold"), reason=hold)],
            number=20,
        )
    )
    (www / "delta.crl").write_bytes(
        make_crl(
            key["delta"],
            subject["delta"],
            [
                Entry(serial("delta", "good"), reason=superseded),
                Entry(serial("delta", "hold"), reason=remove),
            ],
            number=21,
            delta_of=20,
            next_update=dt.timedelta(hours=2),
        )
    )
    # EJBCA: two partitions, each naming itself in its issuing distribution point.
    for part, name in ((1, "revoked"), (2, "keycompromise")):
        (www / f"part{part}.crl").write_bytes(
            make_crl(
                key["parts"],
                subject["parts"],
                [Entry(serial("parts", name))],
                idp=idp(f"{url}/part{part}.crl"),
            )
        )
    # An indirect CRL by a CRL issuer the CA certified with cRLSign: its entry for
    # another CA's serial (the "good" serial, by chance) is not this CA's.
    signer_key, signer, signer_path = delegate_certificate(
        key["ind"], setups["ind"].ca.certificate, tmp_path
    )
    (www / "ind.crl").write_bytes(
        make_crl(
            signer_key,
            signer.subject,
            [
                Entry(serial("ind", "revoked"), issuer=subject["ind"]),
                Entry(serial("ind", "good"), issuer=OTHER_CA),
            ],
            idp=idp(f"{url}/ind.crl", indirect=True),
        )
    )
    places = {
        "delta": f'crl_url = "{url}/base.crl"\ncrl_delta_url = "{url}/delta.crl"',
        "parts": f'crl_url = ["{url}/part1.crl", "{url}/part2.crl"]',
        "ind": f'crl_url = "{url}/ind.crl"\ncrl_issuer = "{signer_path}"',
    }
    port = free_port()
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        "workers = 2",
        f'state_dir = "{tmp_path / "state"}"',
        "",
        "[token]",
        f'module = "{MODULE}"',
        "",
    ]
    for name, setup in setups.items():
        lines += [
            "[[ca]]",
            f'name = "{name}"',
            f'certificate = "{setup.ca.cert_path}"',
            f'key = "{setup.key_uri}"',
            f'responder_certificate = "{setup.responder_cert}"',
            places[name],
            f'issued = "{setup.ca.dir / "newcerts"}"',
            "",
        ]
    config = tmp_path / "three.toml"
    config.write_text("\n".join(lines))
    server = start_server(config, port, tmp_path / "three.log")
    try:
        want = {
            "delta": {
                "revoked": "revoked",
                "good": "revoked",
                "hold": "good",
                "keycompromise": "good",
            },
            "parts": {"revoked": "revoked", "keycompromise": "revoked", "good": "good"},
            "ind": {"revoked": "revoked", "good": "good"},
        }
        for ca, statuses in want.items():
            for name, status in statuses.items():
                got = _status(server, setups[ca], name)
                assert got is getattr(ocsp.OCSPCertStatus, status.upper()), (ca, name, got)
        assert _answer(server, setups["delta"], "good").revocation_reason is superseded
        # The delta's nextUpdate is the sooner: no answer goes past it.
        assert (_answer(server, setups["delta"], "revoked").next_update_utc or NOW) <= (
            NOW + dt.timedelta(hours=2)
        )
    finally:
        server.stop()
        nginx.stop()


OTHER_CA = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Another CA")])


def test_fetching_over_http(world: CrlWorld) -> None:
    """The fetcher asks nginx conditionally (a 304 moves no CRL), cuts a body over
    crl_max_bytes, gives up on a server that never answers, and a failed fetch leaves
    the bytes it had: the CRL in service stays."""
    import socket

    from hsm_ocsp.server.crl_fetch import FetchError, UrlPlace

    first = world.publish("-crlhours", "2")
    place = UrlPlace(world.crl_url, max_bytes=1 << 20, interval=0.2)
    try:
        place.ready()
        assert place.take() == first
        fetches = place.fetches
        until(lambda: place.fetches >= fetches + 3)
        assert place.take() is None  # unchanged: nothing new
        log = (world.nginx.prefix / "access.log").read_text()
        assert re.search(r'"GET /ca.crl HTTP/1.1" 304 ', log), log[-500:]
        second = world.publish("-crlhours", "2")
        until(lambda: (data := place.take()) is not None and data == second)
        world.crl.unlink()  # a 404: said, and nothing taken
        until(lambda: _raises(place.take, FetchError, "HTTP 404"))
    finally:
        place.close()
    world.publish("-crlhours", "2")
    small = UrlPlace(world.crl_url, max_bytes=100, interval=60)
    small.ready()
    with pytest.raises(FetchError, match="over crl_max_bytes"):
        small.take()
    small.close()
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        import hsm_ocsp.server.crl_fetch as crl_fetch

        timeout, crl_fetch.FETCH_TIMEOUT = crl_fetch.FETCH_TIMEOUT, 0.5
        try:
            hung = UrlPlace(f"http://127.0.0.1:{silent.getsockname()[1]}/ca.crl", 1 << 20, 60)
            started = time.monotonic()
            hung.ready()
            assert time.monotonic() - started < 5
            with pytest.raises(FetchError, match="timed out"):
                hung.take()
            hung.close()
        finally:
            crl_fetch.FETCH_TIMEOUT = timeout


def _raises(call: Callable[[], object], kind: type[Exception], text: str) -> bool:
    try:
        call()
    except kind as exc:
        return text in str(exc)
    return False


def test_a_fleet_serves_a_crl_backed_ca(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    """A signing host takes its status from the CA's CRL and fills Redis; a keyless edge
    copies the answers and takes up a revocation published in a new CRL."""
    from .support.fleet import body_for, edge_host, signing_host

    setup = build_ca(tmp_path / "ca", softhsm)
    crl = setup.ca.gencrl(tmp_path / "ca.crl", "-crlhours", "2")
    signing = signing_host(tmp_path, setup, redis_server.url, "signing", crl=crl)
    edge = edge_host(tmp_path, setup, redis_server.url)
    try:
        edge_url, signing_url = edge.url, signing.url
        until(lambda: status_of(edge_url, body_for(setup, "good")) is ocsp.OCSPCertStatus.GOOD, 30)
        assert status_of(edge_url, body_for(setup, "revoked")) is ocsp.OCSPCertStatus.REVOKED
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        setup.ca.gencrl(crl, "-crlhours", "2")
        for url in (signing_url, edge_url):
            for algorithm in ("sha1", "sha256"):
                body = body_for(setup, "good", algorithm)
                asked = functools.partial(status_of, url, body)
                until(lambda: asked() is ocsp.OCSPCertStatus.REVOKED)  # noqa: B023
        answer = ocsp.load_der_ocsp_response(post_ocsp(edge_url, body_for(setup, "revoked")))
        assert answer.next_update_utc is not None
        assert answer.next_update_utc <= (
            x509.load_der_x509_crl(crl.read_bytes()).next_update_utc or answer.next_update_utc
        )
    finally:
        edge.stop()
        signing.stop()


def test_a_restart_while_the_crl_server_is_down(world: CrlWorld, serve: object) -> None:
    """The CRL taken is kept in state_dir: a restart while nginx is down starts from it
    (judged again), instead of not starting or answering without a status."""
    setup = world.setup
    world.publish("-crlhours", "2")
    port = free_port()
    config = world.config(port)
    first = start_server(config, port, world.directory / "first.log")
    assert _status(first, setup, "revoked") is ocsp.OCSPCertStatus.REVOKED
    first.stop()
    world.nginx.stop()
    second = serve(config, port, world.directory / "second.log")  # type: ignore[operator]
    assert _status(second, setup, "revoked") is ocsp.OCSPCertStatus.REVOKED
    assert _status(second, setup, "good") is ocsp.OCSPCertStatus.GOOD
    log = (world.directory / "second.log").read_text()
    assert "kept by the last run" in log and "cannot fetch" in log
