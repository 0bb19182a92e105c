"""The PIN appears in no log line, metric, error message or command line.

Real processes, real token: a responder with two workers serving good,
revoked, nonce and malformed requests, reloading on SIGHUP and scraped for
/metrics; ``hsm-ocsp check``; and failed starts (wrong PIN, world-readable
pin_file). Everything they print, and ``ps`` while they run, is searched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .support.ca import CASetup, build_ca, write_config
from .support.server import free_port
from .support.softhsm import PIN, SoftHSM

WRONG_PIN = "30609417"  # also a secret: a mistyped PIN is close to the real one


def _fetch(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ocsp(setup: CASetup, name: str, nonce: bytes | None = None) -> bytes:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, setup.ca.certificate, hashes.SHA256())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def _ps() -> str:
    return subprocess.run(
        ["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout


def _hsm_ocsp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _assert_no_secret(where: str, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in (PIN, WRONG_PIN):
        assert secret.encode() not in data, f"a PIN is in {where}"


def test_pin_is_in_no_log_metric_error_or_command_line(
    tmp_path: Path, softhsm: SoftHSM, serve: Any
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        {"root": setup},
        port=port,
        server='workers = 2\nlog_format = "json"',
    )
    server = serve(config, port, tmp_path / "server.log")
    seen: list[tuple[str, bytes]] = [("ps", _ps().encode())]
    for name in ("good", "revoked", "keycompromise"):
        for nonce in (None, os.urandom(16)):
            status, body = _fetch(server.url, _ocsp(setup, name, nonce))
            assert status == 200
            assert ocsp.load_der_ocsp_response(body).response_status.value == 0
            seen.append((f"response for {name}", body))
    odd: list[tuple[str, bytes | None]] = [("", b"not ocsp"), ("zzz", None), ("healthz", None)]
    for path, sent in [*odd, ("readyz", None)]:
        seen.append((f"/{path}", _fetch(server.url + path, sent)[1]))
    status, metrics = _fetch(server.url + "metrics")
    assert status == 200 and b"hsm_ocsp_requests_total" in metrics
    seen.append(("/metrics", metrics))
    os.kill(server.process.pid, signal.SIGHUP)
    time.sleep(1.5)
    seen.append(("ps", _ps().encode()))
    server.stop()
    log = server.log.read_bytes()
    assert b"listening on" in log and b"Traceback" not in log
    seen.append(("server log", log))

    checked = _hsm_ocsp("check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    seen.append(("check output", (checked.stdout + checked.stderr).encode()))

    for where, text in seen:
        _assert_no_secret(where, text)


def test_wrong_pin_fails_without_showing_either_pin(tmp_path: Path, softhsm: SoftHSM) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=free_port())
    env = {**os.environ, "HSM_OCSP_PIN": WRONG_PIN}
    process = subprocess.Popen(
        [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        time.sleep(0.3)
        command_lines = _ps()
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, output  # a runtime failure, as check says it
    assert b"PIN is incorrect" in output, output
    _assert_no_secret("serve output after a failed login", output)
    _assert_no_secret("ps during a failed login", command_lines)

    checked = _hsm_ocsp("check", "--config", str(config), env=env)
    assert checked.returncode == 1
    assert "PIN is incorrect" in checked.stdout + checked.stderr
    _assert_no_secret("check output after a failed login", checked.stdout + checked.stderr)


def test_world_readable_pin_file_is_refused(tmp_path: Path, softhsm: SoftHSM) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=free_port())
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    text = config.read_text().replace("[token]\n", f'[token]\npin_file = "{pin_file}"\n')
    config.write_text(text)

    pin_file.chmod(0o644)
    refused = _hsm_ocsp("serve", "--config", str(config))
    assert refused.returncode == 2
    message = refused.stderr
    assert "token.pin_file" in message and str(pin_file) in message and str(config) in message
    assert "readable by everyone" in message
    _assert_no_secret("the refusal", message + refused.stdout)

    # Readable by its owner only: the same file is accepted and the key signs.
    pin_file.chmod(0o600)
    checked = _hsm_ocsp("check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    _assert_no_secret("check with a pin_file", checked.stdout + checked.stderr)
