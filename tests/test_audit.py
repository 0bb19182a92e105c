"""The audit trail of signatures: one JSON line per signature the token is
asked to make, chained by the SHA-256 of the line before; ``hsm-ocsp audit verify``
names a line changed, removed or moved, and a file of the trail missing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from hsm_ocsp.cli.main import main
from hsm_ocsp.store.audit_log import AuditLog

from .support import disk
from .support.ca import build_ca, write_config
from .support.fleet import metric
from .support.server import free_port, start_server
from .support.softhsm import SoftHSM
from .support.watch import status_of


def _trail(directory: Path, lines: int = 30) -> list[Path]:
    """A trail of ``lines`` lines over several files (small files: rotated), oldest first."""
    log = AuditLog(directory / "audit.jsonl", max_bytes=1500, keep=20)
    for i in range(lines):
        assert log.write(
            {
                "time": f"t{i}",
                "ca": "root",
                "key": "k",
                "reason": "fill",
                "this_update": "t",
                "next_update": "u",
                "certs": [[f"{i:X}", "sha1", "good"]],
                "signed_sha256": "00",
            }
        )
    old = sorted(directory.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    return [*old, directory / "audit.jsonl"]


def _verify(files: list[Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", *map(str, files)])
    out, _ = capsys.readouterr()
    return code, out


def test_audit_verify_finds_each_kind_of_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _trail(tmp_path)
    assert len(files) >= 4
    code, out = _verify(files, capsys)
    assert code == 0 and "30 lines" in out, out
    second = files[1]
    lines = second.read_text().splitlines(keepends=True)
    assert len(lines) >= 3

    def tampered(new_lines: list[str]) -> str:
        second.write_text("".join(new_lines))
        code, out = _verify(files, capsys)
        second.write_text("".join(lines))
        assert code == 1, out
        return out

    changed = lines.copy()
    changed[1] = changed[1].replace('"good"', '"revoked"')
    assert f"{second}:3: does not follow {second}:2" in tampered(changed)
    assert f"{second}:2: does not follow {second}:1" in tampered(lines[:1] + lines[2:])
    swapped = [lines[1], lines[0], *lines[2:]]
    assert f"{second}:1: does not follow the last line of {files[0]}" in tampered(swapped)
    code, out = _verify(files[:1] + files[2:], capsys)
    assert code == 1 and f"{files[2]}:1: does not follow the last line of {files[0]}" in out
    assert "a file of the trail is missing" in out
    code, out = _verify(files, capsys)  # put back: sound again
    assert code == 0, out


@pytest.mark.slow
def test_every_signature_of_serve_has_its_line_and_a_full_disk_stops_signing(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """serve with two workers: a line for each signature (the fill, nonces), the trail
    verifies; with audit.required, a trail that cannot be written (its volume full)
    means tryLater, not a signature without its line."""
    setup = build_ca(tmp_path / "ca", softhsm)
    volume = tmp_path / "audit"
    if not disk.mount_tmpfs(volume, "2m"):
        pytest.skip("cannot mount a tmpfs (needs root)")
    server = None
    try:
        port = free_port()
        state = f'workers = 2\nstate_dir = "{tmp_path / "state"}"'
        config = write_config(tmp_path / "config.toml", {"root": setup}, port=port, server=state)
        audit = f'\n[audit]\npath = "{volume / "audit.jsonl"}"\nrequired = true\n'
        config.write_text(config.read_text() + audit)
        server = start_server(config, port, tmp_path / "server.log")
        entries = len(setup.ca.index.read_text().splitlines())
        deadline = time.monotonic() + 30
        while metric(server, "hsm_ocsp_answers_signed_total") < 2 * entries:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cert = x509.load_pem_x509_certificate(setup.certs["good"].read_bytes())

        def nonce() -> bytes:
            builder = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(cert, setup.ca.certificate, hashes.SHA256())
                .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
            )
            return builder.build().public_bytes(Encoding.DER)

        for _ in range(5):
            assert status_of(server.url, nonce()) is ocsp.OCSPCertStatus.GOOD
        time.sleep(0.5)
        signed = metric(server, "hsm_ocsp_answers_signed_total")
        trail = (volume / "audit.jsonl").read_text().splitlines()
        assert len(trail) == signed == 2 * entries + 5
        assert {json.loads(x)["reason"] for x in trail} == {"fill", "nonce"}
        print(f"{len(trail)} lines, {sum(map(len, trail)) / len(trail):.0f} bytes a line")
        assert main(["audit", "verify", str(volume / "audit.jsonl")]) == 0
        ballast = disk.fill(volume)
        # The trail's last page may hold a few more lines; then no line, no signature.
        for _ in range(40):
            if status_of(server.url, nonce()) is ocsp.OCSPResponseStatus.TRY_LATER:
                break
        for _ in range(3):
            assert status_of(server.url, nonce()) is ocsp.OCSPResponseStatus.TRY_LATER
        time.sleep(0.5)
        signed = metric(server, "hsm_ocsp_answers_signed_total")
        assert len((volume / "audit.jsonl").read_text().splitlines()) == signed
        ballast.unlink()
        assert status_of(server.url, nonce()) is ocsp.OCSPCertStatus.GOOD
        assert main(["audit", "verify", str(volume / "audit.jsonl")]) == 0
    finally:
        if server is not None:
            server.stop()
        disk.unmount(volume)
