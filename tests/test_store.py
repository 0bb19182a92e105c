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
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from hsm_ocsp.core.model import CertStatus
from hsm_ocsp.core.shared_answers import StoredAnswer, decode, encode
from hsm_ocsp.store.lmdb_store import LmdbStore

from .support.ca import CASetup, build_ca, write_config
from .support.http_client import http
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
    store.put(b"root\0key", encode(_answer(b"from another process")))
    store.close()


def test_what_one_process_writes_another_reads_and_a_reopened_store_keeps(tmp_path: Path) -> None:
    reader = LmdbStore(tmp_path)  # open before the writer: readers see later commits
    assert reader.get(b"root\0key") is None
    process = multiprocessing.get_context("spawn").Process(target=_write, args=(str(tmp_path),))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    found = reader.get(b"root\0key")
    assert found is not None and decode(found).body == b"from another process"  # type: ignore[union-attr]
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
        url,
        data=builder.build().public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request", "Connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read())


def _counter(server: RunningServer, name: str) -> float:
    """The sum of a metric's samples (``name``, or ``name{labels}`` for one)."""
    total = 0.0
    with urllib.request.urlopen(server.url + "metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _entries(setup: CASetup) -> int:
    return len(setup.ca.index.read_text().splitlines())


def _serve(tmp_path: Path, setup: CASetup, port: int, log: str, workers: int = 2) -> RunningServer:
    state = f'workers = {workers}\nstate_dir = "{tmp_path / "state"}"'
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=port, server=state)
    server = start_server(config, port, tmp_path / log)
    deadline = time.monotonic() + 30  # /readyz answered by one worker: wait for all
    while len(re.findall(r"worker \d+ ready", server.log.read_text())) < workers:
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
    return server


def _wait_for(server: RunningServer, name: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _counter(server, name) < value:
        assert time.monotonic() < deadline, (name, _counter(server, name), value)
        time.sleep(0.1)


_SUCCESSFUL = ocsp.OCSPResponseStatus.SUCCESSFUL
REVOKED = ocsp.OCSPCertStatus.REVOKED


def _revoked_everywhere(server: RunningServer, setup: CASetup, name: str) -> None:
    """Wait for the revocation of ``name`` to be answered; then never good again."""
    deadline = time.monotonic() + 15
    while (answer := _ask(server.url, setup, name)).response_status is not _SUCCESSFUL or (
        answer.certificate_status is not ocsp.OCSPCertStatus.REVOKED
    ):  # tryLater while a producer starts again; good until the change is seen
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for _ in range(20):  # a new connection each: every worker
        assert _ask(server.url, setup, name).certificate_status is ocsp.OCSPCertStatus.REVOKED


@pytest.mark.slow
def test_every_serial_is_produced_ahead_serves_every_worker_and_a_restart_starts_warm(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    entries = _entries(setup)
    port = free_port()
    server = _serve(tmp_path, setup, port, "first.log")
    try:
        # Every serial of the index, for SHA-1 and SHA-256 CertIDs, before any client asks.
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="fill"}', 2 * entries)
        answers = [_ask(server.url, setup, "good") for _ in range(30)]  # a new connection each
        signed = _counter(server, "hsm_ocsp_answers_signed_total")
    finally:
        server.stop()
    assert {a.certificate_status for a in answers} == {ocsp.OCSPCertStatus.GOOD}
    assert signed == 2 * entries  # two workers, thirty requests: nothing signed for them
    assert len({a.produced_at_utc for a in answers}) == 1
    stats = _cli("store", "stats", "--config", str(tmp_path / "config.toml"))
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith(f"ca root: {2 * entries} answers ("), stats.stdout
    assert "soonest nextUpdate" in stats.stdout
    assert stats.stdout.rstrip().endswith("backlog 0 (to produce or refresh now)"), stats.stdout

    server = _serve(tmp_path, setup, port, "second.log")  # the same state directory
    try:
        again = _ask(server.url, setup, "good")
        assert again.produced_at_utc == answers[0].produced_at_utc
        assert again.certificate_status is ocsp.OCSPCertStatus.GOOD
        # Warm: every serial answers at once, from the store (signed before the restart).
        for name in setup.certs:
            warm = _ask(server.url, setup, name)
            assert warm.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, name
            assert warm.produced_at_utc < again.this_update_utc + dt.timedelta(seconds=1)
        time.sleep(1)
        assert _counter(server, "hsm_ocsp_answers_signed_total") == 0  # warm: nothing signed
        # A revocation withdraws the stored good answers at once, and the producer
        # signs the new ones: one a CertID hash, however many workers.
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        _revoked_everywhere(server, setup, "good")
        # (A client that asks before the producer gets to it has it signed for itself,
        # "live", and the producer then finds it made: 2 either way.)
        _wait_for(server, "hsm_ocsp_answers_signed_total", 2)
        time.sleep(1)
        assert _counter(server, "hsm_ocsp_answers_signed_total") == 2
    finally:
        server.stop()
    next_update = answers[0].next_update_utc
    assert next_update is not None and dt.datetime.now(dt.UTC) < next_update  # still alive


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_an_index_change_costs_the_same_signatures_whatever_the_workers(
    tmp_path: Path, softhsm: SoftHSM, workers: int
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    entries = _entries(setup)
    port = free_port()
    server = _serve(tmp_path, setup, port, "server.log", workers=workers)
    try:
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="fill"}', 2 * entries)
        for _ in range(4 * workers):
            assert _ask(server.url, setup, "good").certificate_status is ocsp.OCSPCertStatus.GOOD
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "superseded")
        new = setup.ca.issue("new")
        _revoked_everywhere(server, setup, "good")
        setup.certs["new"] = new
        deadline = time.monotonic() + 15
        while _ask(server.url, setup, "new").certificate_status is not ocsp.OCSPCertStatus.GOOD:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)
        signed = _counter(server, "hsm_ocsp_answers_signed_total")
        change = _counter(server, 'hsm_ocsp_signatures_total{reason="change"}')
        live = _counter(server, 'hsm_ocsp_signatures_total{reason="live"}')
    finally:
        server.stop()
    # The revoked serial and the new one, SHA-1 and SHA-256 each: 4, not 4 a worker.
    # Signed by the producer as changes, or for a client that asked first (live).
    assert change + live == 4 and change >= 2  # the test asks SHA-256 only
    assert signed == 2 * entries + 4


@pytest.mark.slow
def test_workers_keep_serving_the_store_while_the_producer_is_replaced(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    import os
    import signal

    setup = build_ca(tmp_path / "ca", softhsm)
    entries = _entries(setup)
    server = _serve(tmp_path, setup, free_port(), "server.log")
    try:
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="fill"}', 2 * entries)
        producer = server.producer_pid()
        assert producer is not None and producer not in server.worker_pids()
        os.kill(producer, signal.SIGKILL)
        answered = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # stored answers flow while it is away
            answered.append(_ask(server.url, setup, "good").certificate_status)
            if server.producer_pid() not in (None, producer):
                break
            time.sleep(0.05)
        assert set(answered) == {ocsp.OCSPCertStatus.GOOD}, answered
        assert server.producer_pid() != producer, server.log.read_text()[-2000:]
        assert f"producer {producer} ended" in server.log.read_text()
        # The new producer answers what the store lacks: a serial issued just now.
        setup.certs["new"] = setup.ca.issue("new")
        deadline = time.monotonic() + 15
        while _ask(server.url, setup, "new").certificate_status is not ocsp.OCSPCertStatus.GOOD:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert len(server.worker_pids()) == 2
    finally:
        server.stop()


def _readyz(server: RunningServer) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{server.url}readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_a_revocation_made_while_the_producer_is_away_is_answered_once_it_is_back(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """The producer alone reads the index: while it is stopped a revocation is not
    seen, and /readyz says so (a load balancer sends the clients elsewhere). The
    producer that replaces it withdraws the stored good answer before serving on:
    revoked on every worker, never good again."""
    import os
    import signal

    setup = build_ca(tmp_path / "ca", softhsm)
    entries = _entries(setup)
    server = _serve(tmp_path, setup, free_port(), "server.log")
    try:
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="fill"}', 2 * entries)
        assert _readyz(server)[0] == 200
        producer = server.producer_pid()
        assert producer is not None
        os.kill(producer, signal.SIGSTOP)  # hung: alive, reading nothing
        try:
            setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
            status, text = _readyz(server)
            assert status == 503 and "producer" in text, (status, text)
        finally:
            os.kill(producer, signal.SIGKILL)  # the supervisor starts another
        _revoked_everywhere(server, setup, "good")
        assert server.producer_pid() != producer
        deadline = time.monotonic() + 15
        while _readyz(server)[0] != 200:
            assert time.monotonic() < deadline, _readyz(server)
            time.sleep(0.1)
    finally:
        server.stop()


def test_store_stats_leaves_no_file_behind(tmp_path: Path, softhsm: SoftHSM) -> None:
    """Run as root on a missing or bare store it makes nothing: a root-owned file there
    would keep the service (another user) from opening its store."""
    setup = build_ca(tmp_path / "ca", softhsm)
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, server=f'state_dir = "{state}"'
    )
    done = _cli("store", "stats", "--config", str(config))
    assert done.returncode == 0 and "no store" in done.stdout, done
    assert not state.exists()
    LmdbStore(state).close()  # a store as serve leaves it
    (state / "answers.lmdb" / "generation").unlink()
    before = sorted(p.name for p in (state / "answers.lmdb").iterdir())
    done = _cli("store", "stats", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (state / "answers.lmdb").iterdir()) == before


def _die_inside_a_read(directory: str) -> None:
    import os
    import signal

    store = LmdbStore(Path(directory))
    txn = store._env.begin()  # a read that never ends: SIGKILL inside it
    txn.get(b"x")
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_a_reader_slot_left_by_a_killed_process_is_freed(tmp_path: Path, softhsm: SoftHSM) -> None:
    """A process killed inside a read transaction holds its LMDB reader slot: no page
    freed after it is reused and the file grows without end. The producer frees it."""
    setup = build_ca(tmp_path / "ca", softhsm)
    server = _serve(tmp_path, setup, free_port(), "server.log")
    try:
        process = multiprocessing.get_context("spawn").Process(
            target=_die_inside_a_read, args=(str(tmp_path / "state"),)
        )
        process.start()
        process.join(30)
        assert process.exitcode == -9
        deadline = time.monotonic() + 15
        while "freed 1 reader slot" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.2)
        readers = LmdbStore(tmp_path / "state", readonly=True)
        try:
            assert f" {process.pid} " not in readers._env.readers()
        finally:
            readers.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_only_the_pre_produced_cert_id_forms_are_stored(tmp_path: Path, softhsm: SoftHSM) -> None:
    """Other encodings of an issued serial (SHA-384, SHA-512, a SHA-1 CertID without
    the NULL parameters) are answered, live, but never stored nor refreshed: a client
    cannot make the store, and every refresh, grow by an answer per encoding."""
    from .support.requests import build_request, cert_id

    setup = build_ca(tmp_path / "ca", softhsm)
    entries = _entries(setup)
    server = _serve(tmp_path, setup, free_port(), "server.log")
    try:
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="fill"}', 2 * entries)
        serial = setup.serial("good")
        no_null = cert_id(setup.ca.certificate, serial, "sha1")
        no_null["hash_algorithm"] = {"algorithm": "1.3.14.3.2.26", "parameters": None}
        odd = [cert_id(setup.ca.certificate, serial, h) for h in ("sha384", "sha512")]
        for item in [*odd, no_null]:
            for _ in range(3):
                status, body = http(server.url, build_request([item]))
                assert status == 200
                answer = ocsp.load_der_ocsp_response(body)
                assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        time.sleep(1)
        store = LmdbStore(tmp_path / "state", readonly=True)
        try:
            assert store.entries() == 2 * entries
        finally:
            store.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_answers_of_a_first_fill_are_refreshed_before_they_are_due(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """Started on an empty state_dir with a short validity: the fill's answers are
    re-signed at half their validity (not an hour later), so none is served past its
    nextUpdate and nothing is signed live for a client."""
    setup = build_ca(tmp_path / "ca", softhsm)
    entries = _entries(setup)
    port = free_port()
    state = f'workers = 2\nstate_dir = "{tmp_path / "state"}"'
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, port=port, server=state, validity='"20s"'
    )
    server = start_server(config, port, tmp_path / "server.log")
    try:
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="fill"}', 2 * entries)
        started = time.monotonic()
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="refresh"}', 2 * entries, 25)
        waited = time.monotonic() - started
        for _ in range(10):
            answer = _ask(server.url, setup, "good")
            next_update = answer.next_update_utc
            assert next_update is not None and next_update > dt.datetime.now(dt.UTC)
        assert _readyz(server)[0] == 200
        assert _counter(server, 'hsm_ocsp_signatures_total{reason="live"}') == 0
    finally:
        server.stop()
    assert waited < 20, waited


def test_a_warm_restart_withdraws_only_what_changed_while_down(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """The index version the store is true to is kept in state_dir; a
    restart compares the index with it and withdraws only the serials on changed lines
    (never serving first and checking after), so it does not read the whole store. A
    revocation made while the host was down is answered revoked from the first answer
    on; the other answers are served from the store, not signed again."""
    setup = build_ca(tmp_path / "ca", softhsm)
    entries = _entries(setup)
    server = _serve(tmp_path, setup, free_port(), "first.log")
    try:
        _wait_for(server, 'hsm_ocsp_signatures_total{reason="fill"}', 2 * entries)
        deadline = time.monotonic() + 15
        while not list((tmp_path / "state" / "taken").glob("root.*.index")):
            assert time.monotonic() < deadline, "no index version kept"
            time.sleep(0.1)
    finally:
        server.stop()
    setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")  # while down
    server = _serve(tmp_path, setup, free_port(), "second.log")
    try:
        log = server.log.read_text()
        assert "changed lines only" in log and "read whole" not in log, log[-2000:]
        assert "read from its changes since the version kept (a warm start)" in log
        assert "1 records withdrawn" in log or "2 records withdrawn" in log, log[-2000:]
        for _ in range(10):  # both workers, from the first answer on
            assert _ask(server.url, setup, "good").certificate_status is REVOKED
            assert _ask(server.url, setup, "keycompromise").certificate_status is REVOKED
        # The unchanged answers were kept: only the changed serial's are signed again.
        time.sleep(1)
        assert _counter(server, 'hsm_ocsp_signatures_total{reason="fill"}') <= 2
    finally:
        server.stop()
    # Without the kept version (lost, or of another store) the store is read whole.
    for copy in (tmp_path / "state" / "taken").glob("root.*.index"):
        copy.unlink()
    server = _serve(tmp_path, setup, free_port(), "third.log")
    try:
        assert "records withdrawn that the indexes no longer say (read whole for root)" in (
            server.log.read_text()
        )
        assert _ask(server.url, setup, "good").certificate_status is REVOKED
    finally:
        server.stop()


def test_a_revocation_forgotten_while_down_is_not_brought_back_by_a_warm_start(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """The status image kept for a warm start has the remembered revocations laid over
    it: forgotten (``hsm-ocsp revocations forget``) while the host was down, one must not
    come back from the image. A start then reads the index whole."""
    import subprocess
    import sys

    setup = build_ca(tmp_path / "ca", softhsm)
    server = _serve(tmp_path, setup, free_port(), "first.log")
    server.stop()
    serial = setup.serial("keycompromise")
    lines = setup.ca.index.read_text().splitlines(keepends=True)
    fields = next(line.split("\t") for line in lines if int(line.split("\t")[3], 16) == serial)
    dropped = "\t".join(["V", fields[1], "", *fields[3:]])  # the revocation dropped
    setup.ca.index.write_text(
        "".join(
            dropped
            if line.startswith("\t".join(fields[:1])) and int(line.split("\t")[3], 16) == serial
            else line
            for line in lines
        )
    )
    server = _serve(tmp_path, setup, free_port(), "second.log")  # remembered: still revoked
    try:
        assert _ask(server.url, setup, "keycompromise").certificate_status is REVOKED
    finally:
        server.stop()
    assert list((tmp_path / "state" / "taken").glob("root.*.image"))  # kept at that start
    forgot = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsm_ocsp",
            "revocations",
            "forget",
            "--config",
            str(tmp_path / "config.toml"),
            "--ca",
            "root",
            "--serial",
            f"{serial:X}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert forgot.returncode == 0, forgot.stderr
    server = _serve(tmp_path, setup, free_port(), "third.log")
    try:
        good = ocsp.OCSPCertStatus.GOOD
        assert _ask(server.url, setup, "keycompromise").certificate_status is good
        assert "(a warm start)" not in server.log.read_text()
    finally:
        server.stop()
