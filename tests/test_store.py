"""The host's answer store (issue 14, first step): an answer signed by one worker
serves every worker, a restart with the same state directory starts warm, and no
stored answer outlives what the index says."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from hsm_ocsp.core.model import CertStatus
from hsm_ocsp.core.shared_answers import StoredAnswer
from hsm_ocsp.store.lmdb_store import LmdbStore, decode, encode

from .support.ca import CASetup, build_ca, write_config
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import SoftHSM


def _answer(
    body: bytes = b"\x30\x03\x0a\x01\x00", status: CertStatus = CertStatus.GOOD
) -> StoredAnswer:
    return StoredAnswer(body, status, 100, 200, 150, b"s" * 8, b"t" * 8, '"etag"')


def test_a_record_reads_back_as_written_and_foreign_bytes_are_no_record() -> None:
    for status in CertStatus:
        assert decode(encode(_answer(status=status))) == _answer(status=status)
    assert decode(b"") is None
    assert decode(encode(_answer())[:20]) is None


def _write(directory: str) -> None:
    store = LmdbStore(Path(directory))
    store.put(b"root\0key", _answer(b"from another process"))
    store.close()


def test_what_one_process_writes_another_reads_and_a_reopened_store_keeps(tmp_path: Path) -> None:
    reader = LmdbStore(tmp_path)  # open before the writer: readers see later commits
    assert reader.get(b"root\0key") is None
    process = multiprocessing.get_context("spawn").Process(target=_write, args=(str(tmp_path),))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    found = reader.get(b"root\0key")
    assert found is not None and found.body == b"from another process"
    reader.close()
    again = LmdbStore(tmp_path)
    assert again.entries() == 1
    again.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    hsm_ocsp = Path(sys.executable).parent / "hsm-ocsp"
    return subprocess.run([str(hsm_ocsp), *args], capture_output=True, text=True, timeout=60)


def test_store_stats_without_a_state_dir_is_one_line_naming_the_key(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    config = write_config(tmp_path / "config.toml", {"root": setup})
    done = _cli("store", "stats", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "server.state_dir" in done.stderr, done.stderr


def _ask(url: str, setup: CASetup, name: str) -> ocsp.OCSPResponse:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, setup.ca.certificate, hashes.SHA256())
    request = urllib.request.Request(
        url, data=builder.build().public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request", "Connection": "close"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read())


def _counter(server: RunningServer, name: str) -> float:
    with urllib.request.urlopen(server.url + "metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _serve(tmp_path: Path, setup: CASetup, port: int, log: str) -> RunningServer:
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=port,
                          server=f'workers = 2\nstate_dir = "{tmp_path / "state"}"')  # fmt: skip
    server = start_server(config, port, tmp_path / log)
    deadline = time.monotonic() + 30  # /readyz answered by one worker: wait for both
    while len(re.findall(r"worker \d+ ready", server.log.read_text())) < 2:
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
    return server


@pytest.mark.slow
def test_one_signature_serves_every_worker_and_a_restart_starts_warm(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    server = _serve(tmp_path, setup, port, "first.log")
    try:
        answers = [_ask(server.url, setup, "good") for _ in range(30)]  # a new connection each
        signed = _counter(server, "hsm_ocsp_answers_signed_total")
        from_store = _counter(server, "hsm_ocsp_store_answers_total")
    finally:
        server.stop()
    assert {a.certificate_status for a in answers} == {ocsp.OCSPCertStatus.GOOD}
    assert signed == 1, (signed, from_store)  # two workers, thirty connections, one signature
    assert from_store == 1  # the other worker took it from the store
    assert len({a.produced_at_utc for a in answers}) == 1
    stats = _cli("store", "stats", "--config", str(tmp_path / "config.toml"))
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith("ca root: 1 answers (1 good), "), stats.stdout
    assert "soonest nextUpdate" in stats.stdout

    server = _serve(tmp_path, setup, port, "second.log")  # the same state directory
    try:
        again = _ask(server.url, setup, "good")
        assert _counter(server, "hsm_ocsp_answers_signed_total") == 0  # warm: nothing signed
        assert again.produced_at_utc == answers[0].produced_at_utc
        assert again.certificate_status is ocsp.OCSPCertStatus.GOOD
        # A revocation withdraws the stored good answer in every worker at once, and
        # one signature answers it in both.
        before = _counter(server, "hsm_ocsp_answers_signed_total")
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        deadline = time.monotonic() + 15
        statuses = set()
        while time.monotonic() < deadline:
            status = _ask(server.url, setup, "good").certificate_status
            statuses.add(status)
            if status is ocsp.OCSPCertStatus.REVOKED:
                break
            time.sleep(0.2)
        assert ocsp.OCSPCertStatus.REVOKED in statuses
        time.sleep(2.5)  # both workers have taken the new index up (checked once a second)
        for _ in range(20):  # both workers: never the stored good again
            assert _ask(server.url, setup, "good").certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert _counter(server, "hsm_ocsp_answers_signed_total") - before == 1
    finally:
        server.stop()
    assert dt.datetime.now(dt.UTC) < answers[0].next_update_utc  # still within its life
