"""No answer outlives the certificate that signs it, and none is signed outside its life.

On a real server and token: a responder certificate that
expires in 10 minutes caps nextUpdate; one that has expired, or is not valid yet,
makes its CA answer tryLater (never a signature) and /readyz 503.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .support.ca import CASetup, build_ca, write_config
from .support.server import free_port, start_server
from .support.softhsm import SoftHSM


def _ask(url: str, setup: CASetup, name: str) -> ocsp.OCSPResponse:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, setup.ca.certificate, hashes.SHA256())
    req = urllib.request.Request(
        url,
        data=builder.build().public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read())


def _ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _with_responder(
    tmp_path: Path, softhsm: SoftHSM, not_before: dt.datetime, not_after: dt.datetime
) -> tuple[CASetup, Path, int]:
    setup = build_ca(tmp_path / "ca", softhsm)
    cert = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())  # type: ignore[union-attr]
    setup.responder_cert = setup.ca.sign_responder(
        cert.public_key(), "Short Responder", not_before=not_before, not_after=not_after
    )
    port = free_port()
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=port, validity='"1h"')
    return setup, config, port


def test_next_update_is_capped_by_a_responder_certificate_expiring_in_10_minutes(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(minutes=10)
    setup, config, port = _with_responder(tmp_path, softhsm, now - dt.timedelta(hours=1), not_after)
    server = start_server(config, port, tmp_path / "server.log")
    try:
        response = _ask(server.url, setup, "good")
        assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.next_update_utc == not_after  # not thisUpdate + 1 h
        assert response.this_update_utc + dt.timedelta(minutes=11) > not_after
        with urllib.request.urlopen(server.url + "metrics", timeout=5) as page:
            assert 'hsm_ocsp_validity_capped{ca="root"} 1.0' in page.read().decode()
    finally:
        server.stop()
    assert server.log.read_text().count("nextUpdate cut to the signing certificate") == 1


def test_try_later_never_a_signature_once_the_only_responder_certificate_expired(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    now = dt.datetime.now(dt.UTC)
    not_after = (now + dt.timedelta(seconds=8)).replace(microsecond=0)
    setup, config, port = _with_responder(tmp_path, softhsm, now - dt.timedelta(hours=1), not_after)
    server = start_server(config, port, tmp_path / "server.log")
    try:
        before = _ask(server.url, setup, "revoked")
        assert before.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert before.next_update_utc == not_after
        time.sleep(max(0.0, not_after.timestamp() - time.time() + 0.5))
        for name in ("revoked", "good", "revoked"):  # a cached one included
            after = _ask(server.url, setup, name)
            assert after.response_status is ocsp.OCSPResponseStatus.TRY_LATER, name
        assert _ready(server.url) == 503
    finally:
        server.stop()
    log = server.log.read_text()
    assert log.count("the signing certificate expired") == 1  # once a minute, not a request


def test_try_later_while_the_responder_certificate_is_not_valid_yet(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    now = dt.datetime.now(dt.UTC)
    setup, config, port = _with_responder(
        tmp_path, softhsm, now + dt.timedelta(days=1), now + dt.timedelta(days=30)
    )
    server = start_server(config, port, tmp_path / "server.log", ready=False)
    try:
        response = _ask(server.url, setup, "good")
        assert response.response_status is ocsp.OCSPResponseStatus.TRY_LATER
        assert _ready(server.url) == 503
    finally:
        server.stop()
    assert "is not valid before" in server.log.read_text()


def test_rule_29_refresh_at_half_under_16h_else_8h_before_and_within_4_days() -> None:
    from hsm_ocsp.core.clock import refresh_time

    start = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    hours = dt.timedelta(hours=1)
    assert refresh_time(start, start + 1 * hours) == start + 0.5 * hours
    assert refresh_time(start, start + 15 * hours) == start + 7.5 * hours
    assert refresh_time(start, start + 16 * hours) == start + 8 * hours  # 8 h before
    assert refresh_time(start, start + 24 * hours) == start + 16 * hours
    assert refresh_time(start, start + 7 * 24 * hours) == start + 4 * 24 * hours  # BR 4.9.10
    assert refresh_time(start, start + 10 * 24 * hours) == start + 4 * 24 * hours


def _load(
    url: str, setup: CASetup, answers: list[tuple[int, bytes]], stop: threading.Event
) -> list[threading.Thread]:
    """Three clients asking for the good certificate until ``stop`` (two with a nonce,
    signed live; one cached), each answer (status, body) kept in ``answers``."""

    def client(nonce: bool) -> None:
        cert = x509.load_pem_x509_certificate(setup.certs["good"].read_bytes())
        while not stop.is_set():
            builder = ocsp.OCSPRequestBuilder().add_certificate(
                cert, setup.ca.certificate, hashes.SHA256()
            )
            if nonce:
                builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
            req = urllib.request.Request(
                url,
                data=builder.build().public_bytes(Encoding.DER),
                headers={"Content-Type": "application/ocsp-request"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as response:
                    answers.append((response.status, response.read()))
            except OSError as exc:
                answers.append((0, str(exc).encode()))
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(n,)) for n in (True, True, False)]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.slow
def test_certificate_replaced_twice_under_load_no_failed_request_every_answer_verifies(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A rollover under load: A is replaced by B with a SIGHUP (and nine more
    SIGHUPs follow), then C, installed ahead, takes over at its notBefore. Every request
    is answered, and every answer verifies against the certificate it carries, which
    was valid at its producedAt and is the one in use then."""
    import shutil
    import signal

    from cryptography.hazmat.primitives.asymmetric import ec

    setup = build_ca(tmp_path / "ca", softhsm)
    key = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes()).public_key()  # type: ignore[union-attr]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    switch = now + dt.timedelta(seconds=14)
    paths = {
        "A": setup.ca.sign_responder(key, "Responder A", not_before=now - dt.timedelta(hours=1)),
        "B": setup.ca.sign_responder(key, "Responder B", not_before=now - dt.timedelta(minutes=1)),
        "C": setup.ca.sign_responder(key, "Responder C", not_before=switch),
    }
    certs = {n: x509.load_pem_x509_certificate(p.read_bytes()) for n, p in paths.items()}
    by_der = {c.public_bytes(Encoding.DER): n for n, c in certs.items()}
    folder = tmp_path / "responder"
    folder.mkdir()
    shutil.copy(paths["A"], folder / "current.pem")
    shutil.copy(paths["C"], folder / "next.pem")  # installed ahead
    setup.responder_cert = folder
    port = free_port()
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, port=port, server="workers = 2"
    )
    server = start_server(config, port, tmp_path / "server.log")
    answers: list[tuple[int, bytes]] = []
    stop = threading.Event()
    threads = _load(server.url, setup, answers, stop)
    try:
        time.sleep(2)
        replaced = folder / "current.new"
        shutil.copy(paths["B"], replaced)
        os.replace(replaced, folder / "current.pem")
        for _ in range(10):  # the replacement, then nine reloads of the same files
            os.kill(server.process.pid, signal.SIGHUP)
            time.sleep(0.5)
        time.sleep(max(0.0, switch.timestamp() - time.time() + 3))
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        server.stop()

    assert answers and all(status == 200 for status, _ in answers), [
        body[:200] for status, body in answers if status != 200
    ][:3]
    seen = []
    for _, body in answers:
        response = ocsp.load_der_ocsp_response(body)
        assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        (carried,) = response.certificates
        name = by_der[carried.public_bytes(Encoding.DER)]
        produced = response.produced_at_utc
        assert carried.not_valid_before_utc <= produced < carried.not_valid_after_utc, name
        assert isinstance(key, ec.EllipticCurvePublicKey)
        carried_key = carried.public_key()
        assert isinstance(carried_key, ec.EllipticCurvePublicKey)
        carried_key.verify(
            response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256())
        )
        seen.append((produced, name))
    order = [name for _, name in sorted(seen)]
    first = {name: order.index(name) for name in "ABC" if name in order}
    assert set(first) == {"A", "B", "C"}, sorted(set(order))
    assert first["A"] < first["B"] < first["C"]
    late = [name for produced, name in seen if produced >= switch + dt.timedelta(seconds=1)]
    assert late and set(late) == {"C"}  # answers made after C's notBefore carry C
    log = server.log.read_text()
    # Each SIGHUP decided once, by the supervisor (the same bytes again: the certificates
    # of the directory are read again), and taken by the producer and both workers, who
    # say nothing of it. (Two SIGHUPs that arrive together are one signal: 9 is allowed.)
    assert 9 <= log.count(" accepted (sha256 ") <= 10 and "reload refused" not in log
    assert "configuration reloaded" not in log


def test_a_reload_that_cannot_be_taken_is_refused_in_one_line_and_the_old_one_serves(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    import signal

    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, port=port, server="workers = 2"
    )
    good = config.read_text()
    server = start_server(config, port, tmp_path / "server.log")
    try:
        for broken, says in (
            (good.replace("[[ca]]", "[[ca]\n"), "not valid TOML"),
            (good.replace("workers = 2", "workers = 3"), "server changed, which needs a restart"),
            (good.replace(str(setup.ca.index), str(tmp_path / "none.txt")), "ca[0].index"),
        ):
            before = server.log.read_text().count("reload refused")
            config.write_text(broken)
            os.kill(server.process.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while server.log.read_text().count("reload refused") == before:
                assert time.monotonic() < deadline, server.log.read_text()[-2000:]
                time.sleep(0.1)
            time.sleep(0.5)
            refusals = [
                line for line in server.log.read_text().splitlines() if "reload refused" in line
            ]
            assert len(refusals) == before + 1 and says in refusals[-1], refusals
            response = _ask(server.url, setup, "revoked")  # the running configuration serves
            assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    finally:
        server.stop()


def test_check_reports_the_certificate_in_use_the_next_one_and_warns_without_one(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    from hsm_ocsp.cli.check import check_config
    from hsm_ocsp.config.file import load_config

    setup = build_ca(tmp_path / "ca", softhsm)
    key = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes()).public_key()  # type: ignore[union-attr]
    now = dt.datetime.now(dt.UTC)
    current = setup.ca.sign_responder(key, "Current", not_after=now + dt.timedelta(days=10))
    upcoming = setup.ca.sign_responder(
        key,
        "Upcoming",
        not_before=now + dt.timedelta(days=5),
        not_after=now + dt.timedelta(days=60),
    )
    setup.responder_cert = current
    alone = write_config(tmp_path / "alone.toml", {"root": setup})
    messages = [(f.level, f.message) for f in check_config(load_config(alone), warn_days=30)]
    assert any(level == "ok" and "in use" in m and "Current" in m for level, m in messages)
    assert any(level == "warning" and "no next one is installed" in m for level, m in messages)
    quiet = [f for f in check_config(load_config(alone), warn_days=7) if f.level == "warning"]
    assert not [f for f in quiet if "no next one" in f.message]  # 10 days > --warn-days 7

    both = tmp_path / "both.toml"
    listed = f'responder_certificate = ["{current}", "{upcoming}"]'
    both.write_text(alone.read_text().replace(f'responder_certificate = "{current}"', listed))
    messages = [(f.level, f.message) for f in check_config(load_config(both), warn_days=30)]
    assert any(
        level == "ok" and "next responder certificate" in m and "Upcoming" in m
        for level, m in messages
    )
    assert not [m for level, m in messages if level == "warning"], messages


def _signed_by_carried_certificate(body: bytes) -> tuple[x509.Certificate, dt.datetime]:
    """The certificate an answer carries, once its signature verifies against it."""
    from cryptography.hazmat.primitives.asymmetric import ec

    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    (carried,) = response.certificates
    public_key = carried.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = response.signature_hash_algorithm
    assert algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    return carried, response.produced_at_utc


def _wait_for_log(server: Any, text: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while server.log.read_text().count(text) < count:
        assert time.monotonic() < deadline, server.log.read_text()[-3000:]
        time.sleep(0.1)


@pytest.mark.slow
def test_a_new_key_rolls_in_under_load_without_a_restart(tmp_path: Path, softhsm: SoftHSM) -> None:
    """New keys, as the operator's guide runs it: keygen
    makes key B under a new label (key A keeps signing), csr, the CA signs it with
    ``-extensions ocsp``, its certificate goes beside A's and a SIGHUP brings it in;
    then key C's certificate, installed ahead, takes over at its notBefore. Under
    load, every request is answered and every answer verifies against the
    certificate it carries, which was valid at its producedAt."""
    import shutil
    import signal

    from hsm_ocsp.cli.main import main
    from hsm_ocsp.pkcs11.keys import find_public_key, public_key_from_token

    from .support.pki import run
    from .support.softhsm import MODULE

    setup = build_ca(tmp_path / "ca", softhsm)
    folder = tmp_path / "responder"
    folder.mkdir()
    assert setup.responder_cert is not None
    shutil.copy(setup.responder_cert, folder / "a.pem")
    setup.responder_cert = folder
    port = free_port()
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, port=port, server="workers = 2"
    )
    server = start_server(config, port, tmp_path / "server.log")
    answers: list[tuple[int, bytes]] = []
    stop = threading.Event()
    threads = _load(server.url, setup, answers, stop)
    try:
        time.sleep(1.5)
        # Key B, P-384: another key and another curve, made while A signs.
        label = f"next-{os.getpid()}"
        uri_b = f"pkcs11:token={softhsm.label};object={label}"
        assert main(["keygen", "--module", MODULE, "--key", uri_b, "--algorithm", "ec-p384"]) == 0
        request = tmp_path / "b.csr"
        assert (
            main(
                [
                    "csr",
                    "--module",
                    MODULE,
                    "--key",
                    uri_b,
                    "--subject",
                    "/CN=Responder B",
                    "--out",
                    str(request),
                ]
            )
            == 0
        )
        run(
            "openssl",
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            setup.ca.cert_path,
            "-CAkey",
            setup.ca.dir / "ca.key",
            "-set_serial",
            "0x0B0B",
            "-days",
            "30",
            "-extfile",
            setup.ca.cnf,
            "-extensions",
            "ocsp",
            "-out",
            folder / "b.pem",
        )
        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for_log(server, " accepted (sha256 ", 1)  # decided once, by the supervisor
        time.sleep(1.5)
        # Key C, installed ahead: it takes over by itself at its notBefore.
        _, public_c = softhsm.make_key("ec-p256")
        switch = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=6)
        shutil.copy(
            setup.ca.sign_responder(public_c, "Responder C", not_before=switch), folder / "c.pem"
        )
        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for_log(server, " accepted (sha256 ", 2)
        time.sleep(max(0.0, switch.timestamp() - time.time() + 2.5))
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        server.stop()

    with softhsm.session() as session:
        public_b = public_key_from_token(find_public_key(session, label=label, key_id=None))
    names = {"Responder B": "B", "Responder C": "C"}
    assert answers and all(status == 200 for status, _ in answers), [
        body[:200] for status, body in answers if status != 200
    ][:3]
    seen = []
    for _, body in answers:
        carried, produced = _signed_by_carried_certificate(body)
        assert carried.not_valid_before_utc <= produced < carried.not_valid_after_utc
        common_name = carried.subject.rfc4514_string().removeprefix("CN=")
        seen.append((produced, names.get(common_name, "A")))
        if names.get(common_name) == "B":
            assert carried.public_key() == public_b
    order = [name for _, name in sorted(seen)]
    first = {name: order.index(name) for name in "ABC" if name in order}
    assert set(first) == {"A", "B", "C"}, sorted(set(order))
    assert first["A"] < first["B"] < first["C"]
    late = [name for produced, name in seen if produced >= switch + dt.timedelta(seconds=1)]
    assert late and set(late) == {"C"}
    assert "reload refused" not in server.log.read_text()


def test_a_certificate_whose_key_is_not_on_the_token_is_refused_at_reload(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A new certificate of a key the token lacks (the operator forgot keygen, or
    signed the wrong CSR) is refused in one line naming the file and the key; the
    running key keeps signing, and a worker started later still starts."""
    import signal

    from cryptography.hazmat.primitives.asymmetric import ec

    setup = build_ca(tmp_path / "ca", softhsm)
    assert setup.responder_cert is not None
    current = setup.responder_cert
    port = free_port()
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, port=port, server="workers = 2"
    )
    server = start_server(config, port, tmp_path / "server.log")
    try:
        stranger = setup.ca.sign_responder(
            ec.generate_private_key(ec.SECP256R1()).public_key(), "Not On The Token"
        )
        listed = f'responder_certificate = ["{current}", "{stranger}"]'
        config.write_text(
            config.read_text().replace(f'responder_certificate = "{current}"', listed)
        )
        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for_log(server, "reload refused", 1)
        time.sleep(1.0)
        refusals = [
            line for line in server.log.read_text().splitlines() if "reload refused" in line
        ]
        assert len(refusals) == 1, refusals  # the supervisor's, decided once
        # No process took the refused configuration (before, each worker read the file
        # again and took it on its own: "configuration reloaded", once per worker).
        assert "configuration reloaded" not in server.log.read_text()
        assert " accepted (sha256 " not in server.log.read_text()
        assert f"ca[0].responder_certificate: {stranger}" in refusals[0]
        assert "no such private key" in refusals[0] and "Traceback" not in server.log.read_text()
        response = _ask(server.url, setup, "revoked")
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
        (carried,) = response.certificates
        assert carried.subject.rfc4514_string() == "CN=OCSP Responder"
        # A worker that dies now is replaced with the running configuration and starts.
        os.kill(server.worker_pids()[0], signal.SIGKILL)
        _wait_for_log(server, "starting another", 1)
        for _ in range(4):
            assert _ask(server.url, setup, "good").certificate_status is ocsp.OCSPCertStatus.GOOD
    finally:
        server.stop()


def test_the_key_of_an_expired_certificate_is_not_looked_for(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """Retiring a key: its certificate has expired and the key is deleted from the token
    before the file is removed. The responder no longer needs that key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsm_ocsp.config.file import load_config
    from hsm_ocsp.server.key_set import key_specs

    setup = build_ca(tmp_path / "ca", softhsm)
    assert setup.responder_cert is not None
    now = dt.datetime.now(dt.UTC)
    gone = ec.generate_private_key(ec.SECP256R1()).public_key()  # on no token
    expired = setup.ca.sign_responder(
        gone,
        "Expired",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    config = write_config(tmp_path / "config.toml", {"root": setup})
    listed = f'responder_certificate = ["{setup.responder_cert}", "{expired}"]'
    config.write_text(
        config.read_text().replace(f'responder_certificate = "{setup.responder_cert}"', listed)
    )
    specs = key_specs(load_config(config))
    current = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())
    assert len(specs) == 1
    assert specs[0].public_key == current.public_key().public_bytes(
        Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
