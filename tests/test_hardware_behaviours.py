"""Hardware HSMs as they really behave, each behaviour imitated over SoftHSM
by tests/support/behaving_token.c, against a real ``serve`` with two workers: cached and
nonce requests through a quiet period, every nonce answer signed and verified (never
tryLater), /readyz never failing, no "token lost", and what was ridden out counted."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .support import behaving_token, fuzz
from .support.ca import CASetup, build_ca, write_config
from .support.fleet import metric
from .support.http_client import answer_of
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import MODULE, SoftHSM
from .support.watch import request_for

pytestmark = pytest.mark.slow

BEHAVIOURS = {
    "read-only sessions refused (CloudHSM)": ({"no_ro": 1}, None),
    "a session idle 1.5 s dropped (YubiHSM 2: 30 s)": ({"idle_ms": 1500}, "session"),
    "every 20th signature CKR_FUNCTION_FAILED (CloudHSM throttling)": (
        {"fail_every": 20},
        "throttled",
    ),
    "every 20th signature CKR_DEVICE_ERROR": ({"fail_every": 20, "fail_rv": 0x30}, "throttled"),
    "5 ms a signature (a network HSM)": ({"latency_ms": 5}, None),
    "multi-part signing refused (CloudHSM)": ({"no_multipart": 1}, None),
    "a session idle 2.5 s dropped, token.keepalive 1 s": ({"idle_ms": 2500}, "kept"),
    "at most 2 sessions on the token, token.sessions 2 (YubiHSM 2: 16)": (
        {"max_sessions": 2},
        "limit",
    ),
    "object look-ups over 10 a second CKR_DEVICE_ERROR, then SIGHUP (CloudHSM)": (
        {"find_per_s": 10},
        "sighup",
    ),
}
# Seconds of requests before and after the quiet period (benchmarks/hardware_behaviours.py
# runs each behaviour for 30 + 30 s through HSM_TEST_BEHAVIOUR_SECONDS).
LOAD = float(os.environ.get("HSM_TEST_BEHAVIOUR_SECONDS", "2.5"))
QUIET = 3.0  # longer than the idle timeout


def _readiness(url: str, stop: threading.Event, failures: list[int]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url + "readyz", timeout=5):
                pass
        except urllib.error.HTTPError as exc:
            failures.append(exc.code)
        except OSError:
            failures.append(0)
        time.sleep(0.2)


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_a_token_that_behaves_as_hardware_does_is_ridden_out(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch, behaviour: str
) -> None:
    settings, ridden = BEHAVIOURS[behaviour]
    for name, value in behaving_token.environment(**settings).items():
        monkeypatch.setenv(name, value)
    counts = tmp_path / "sessions.count"  # every process's sessions, as the token counts
    monkeypatch.setenv("HSM_SHIM_SESSIONS_FILE", str(counts))
    token = ('\nkeepalive = "1s"' if ridden == "kept" else "") + (
        "\nsessions = 2" if ridden == "limit" else ""
    )
    setup, server, signer = _serve_on_the_shim(tmp_path, softhsm, token)
    cert = x509.load_pem_x509_certificate(setup.certs["good"].read_bytes())
    stop, not_ready = threading.Event(), list[object]()
    watcher = threading.Thread(target=_readiness, args=(server.url, stop, not_ready))
    watcher.start()
    answers: list[ocsp.OCSPResponse] = []
    try:
        for phase in range(2):
            until = time.monotonic() + LOAD
            while time.monotonic() < until:
                builder = ocsp.OCSPRequestBuilder().add_certificate(
                    cert, setup.ca.certificate, hashes.SHA1()
                )
                nonce = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
                cached = request_for(cert, setup.ca.certificate, "sha256")
                for body in (nonce.build().public_bytes(Encoding.DER), cached):
                    answers.append(answer_of(server.url, body))
            if phase == 0:
                if ridden == "sighup":  # a reload looks the keys up again, throttled
                    os.kill(server.process.pid, signal.SIGHUP)
                time.sleep(QUIET)
        recovered = {
            kind: metric(server, f'hsm_ocsp_token_recoveries_total{{kind="{kind}"}}')
            for kind in ("session", "throttled")
        }
    finally:
        stop.set()
        watcher.join(10)
        server.stop()
    log = server.log.read_text()
    assert len(answers) > 20
    for answer in answers:
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, behaviour
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        fuzz.verify(signer, answer.signature, answer.tbs_response_bytes, answer)
    assert not not_ready, f"/readyz failed: {not_ready}"
    assert "token lost" not in log and "Traceback" not in log, log[-3000:]
    _check_ridden_out(ridden, log, behaving_token.most_sessions(counts), recovered)
    print(f"{behaviour}: {len(answers)} answers, ridden out {recovered}")


def _serve_on_the_shim(
    tmp_path: Path, softhsm: SoftHSM, token: str = ""
) -> tuple[CASetup, RunningServer, x509.Certificate]:
    """serve (two workers) on SoftHSM behind the shim, as the HSM_SHIM_* environment says;
    ``token``: more [token] lines. The CA set-up, the server, the responder certificate."""
    module = behaving_token.build(tmp_path)
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        {"root": setup},
        port=port,
        server=f'workers = 2\nstate_dir = "{tmp_path / "state"}"',
    )
    config.write_text(
        config.read_text().replace(f'module = "{MODULE}"', f'module = "{module}"' + token)
    )
    server = start_server(config, port, tmp_path / "server.log")
    assert setup.responder_cert is not None
    return setup, server, x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())


def _check_ridden_out(
    ridden: str | None, log: str, most_open: int, recovered: dict[str, float]
) -> None:
    """What each behaviour must show it rode out."""
    if ridden == "limit":  # never more than token.sessions open, all processes together
        assert most_open <= 2, most_open
    if ridden == "sighup":  # look-ups (at start, at the reload) were throttled and waited out
        assert "reload" in log.lower(), log[-2000:]
        assert recovered["throttled"] >= 1, recovered
    if ridden == "kept":  # the keep-alive kept the sessions: none was dropped
        assert recovered["session"] == 0, recovered
    elif ridden in recovered:
        assert recovered[ridden] >= 1, recovered


def test_a_token_that_goes_away_and_comes_back_in_another_slot(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network HSM's client restarted, an HA group failing over, a USB token re-plugged:
    the token is away for 3 s (no slot, CKR_DEVICE_REMOVED), then back under another slot
    id. Stored answers are served throughout; a nonce request is tryLater only while it
    is away, and signed again within 5 s of its return, found by its label."""
    gone = tmp_path / "gone"
    for name, value in behaving_token.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HSM_SHIM_GONE_FILE", str(gone))
    setup, server, signer = _serve_on_the_shim(tmp_path, softhsm)
    cert = x509.load_pem_x509_certificate(setup.certs["good"].read_bytes())
    cached = request_for(cert, setup.ca.certificate, "sha256")

    def nonce() -> bytes:
        builder = ocsp.OCSPRequestBuilder().add_certificate(
            cert, setup.ca.certificate, hashes.SHA1()
        )
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        return builder.build().public_bytes(Encoding.DER)

    seen: list[tuple[float, str, ocsp.OCSPResponse]] = []
    try:
        assert answer_of(server.url, nonce()).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        gone.touch()
        away_at = time.monotonic()
        while time.monotonic() - away_at < 3:
            seen.append(
                (
                    time.monotonic(),
                    "away",
                    answer_of(server.url, nonce()),
                )
            )
            seen.append(
                (
                    time.monotonic(),
                    "stored",
                    answer_of(server.url, cached),
                )
            )
            time.sleep(0.05)
        gone.unlink()
        back_at = time.monotonic()
        signed_again = None
        while time.monotonic() - back_at < 10:
            answer = answer_of(server.url, nonce())
            if answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                signed_again = time.monotonic() - back_at
                fuzz.verify(signer, answer.signature, answer.tbs_response_bytes, answer)
                break
            time.sleep(0.1)
        for _ in range(20):  # and it stays back
            answer = answer_of(server.url, nonce())
            assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    finally:
        server.stop()
    assert signed_again is not None and signed_again < 5, signed_again
    for _, kind, answer in seen:
        if kind == "stored":  # the store serves while the token is away
            assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        else:  # signed before the token noticed it gone, or tryLater: never anything else
            assert answer.response_status in (
                ocsp.OCSPResponseStatus.SUCCESSFUL,
                ocsp.OCSPResponseStatus.TRY_LATER,
            )
    assert any(a.response_status is ocsp.OCSPResponseStatus.TRY_LATER for _, _, a in seen)
    print(f"signed again {signed_again:.2f} s after the token came back in another slot")


def test_softhsm_reset_on_fork_as_hardware_behaves_after_a_fork(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM with ``library.reset_on_fork = true`` forgets its initialisation in a forked
    child, as hardware modules do (PKCS#11 2.20 6.6.1): every process that signs must
    initialise the module itself. serve with two workers signs nonce answers throughout."""
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(softhsm.conf.read_text() + "library.reset_on_fork = true\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        {"root": setup},
        port=port,
        server=f'workers = 2\nstate_dir = "{tmp_path / "state"}"',
    )
    server = start_server(config, port, tmp_path / "server.log")
    signer = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())  # type: ignore[union-attr]
    cert = x509.load_pem_x509_certificate(setup.certs["revoked"].read_bytes())
    try:
        for _ in range(20):  # a new connection each: both workers, through the producer
            builder = ocsp.OCSPRequestBuilder().add_certificate(
                cert, setup.ca.certificate, hashes.SHA1()
            )
            builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
            answer = answer_of(server.url, builder.build().public_bytes(Encoding.DER))
            assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
            fuzz.verify(signer, answer.signature, answer.tbs_response_bytes, answer)
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048", "ed25519"])
def test_csr_signs_with_one_call_on_a_token_without_multi_part_signing(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """``csr`` too makes one C_Sign a signature (data hashed on the host): it works on a
    token that refuses C_SignUpdate (AWS CloudHSM), and the request verifies."""
    import subprocess
    import sys

    for name, value in behaving_token.environment(no_multipart=1).items():
        monkeypatch.setenv(name, value)
    module = behaving_token.build(tmp_path)
    uri, _ = softhsm.make_key(algorithm)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsm_ocsp",
            "csr",
            "--module",
            str(module),
            "--key",
            uri,
            "--subject",
            "CN=ocsp.example",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    request = x509.load_pem_x509_csr(done.stdout)
    assert request.is_signature_valid
