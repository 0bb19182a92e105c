"""A revoked certificate is never answered good, whatever fails between the index and
the store (issue 26): a host that reads the index answers a revocation as revoked or
tryLater from a few seconds after it is written, never with the old stored "good".

Each test is one fault, against a real ``serve`` with two workers and its producer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from hsm_ocsp.store.vouch import VOUCH_FOR

from .support import disk
from .support.ca import CASetup, build_ca, write_config
from .support.p11kit import AVAILABLE, CLIENT_MODULE, P11KitServer
from .support.scrape import metric
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import MODULE, SoftHSM
from .support.watch import Watch, request_for, status_of, until

pytestmark = pytest.mark.slow
REVOKED = ocsp.OCSPCertStatus.REVOKED
# "A few seconds after a revocation is written": the producer's word ages out
# (VOUCH_FOR), and the index watcher's tick and the client's round trip are added.
GRACE = VOUCH_FOR + 2.0


def _readyz(server: RunningServer) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.url + "readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _serve(tmp_path: Path, setup: CASetup, *, module: str = MODULE) -> RunningServer:
    port = free_port()
    state = f'workers = 2\nstate_dir = "{tmp_path / "state"}"'
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=port, server=state)
    text = config.read_text().replace(f'module = "{MODULE}"', f'module = "{module}"')
    config.write_text(text)
    server = start_server(config, port, tmp_path / "server.log")
    entries = len(setup.ca.index.read_text().splitlines())
    until(lambda: metric(server, 'hsm_ocsp_signatures_total{reason="fill"}') >= 2 * entries, 30)
    return server


def _bodies(setup: CASetup, name: str, hashes: tuple[str, ...]) -> dict[str, bytes]:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    return {h: request_for(cert, setup.ca.certificate, h) for h in hashes}


@pytest.mark.skipif(not AVAILABLE, reason="p11-kit server and client (Debian p11-kit) missing")
def test_a_producer_replaced_while_the_token_is_away_still_withdraws_a_revocation(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replacement starts without the token: it reads the index and withdraws what
    changed before anything else, and proves its keys once the token is back."""
    setup = build_ca(tmp_path / "ca", softhsm)
    token = P11KitServer(tmp_path / "p11kit.sock", MODULE, softhsm.label)
    token.start()
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", token.address)
    server = _serve(tmp_path, setup, module=CLIENT_MODULE)
    bodies = _bodies(setup, "good", ("sha1", "sha256"))
    watch = Watch([server.url], bodies)
    try:
        assert status_of(server.url, bodies["sha256"]) is ocsp.OCSPCertStatus.GOOD
        watch.start()
        token.kill()
        producer = server.producer_pid()
        assert producer is not None
        os.kill(producer, signal.SIGKILL)
        revoked_at = time.monotonic()
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        until(lambda: server.producer_pid() not in (None, producer), 20)
        time.sleep(GRACE + 3)  # the replacement runs, the token still away
        assert not watch.good_after(revoked_at + GRACE), watch.good_after(revoked_at + GRACE)
        assert "token not usable at start" in server.log.read_text()
        token.start()  # back: the revocation is signed within seconds
        for what in bodies:
            until(lambda w=what: watch.last(server.url, w) is REVOKED, 20)
    finally:
        watch.stop()
        server.stop()
        token.kill()
    assert not watch.good_after(revoked_at + GRACE)


def test_a_revocation_is_never_answered_good_while_the_state_volume_is_full(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """The withdrawal cannot commit: it is tried again every second until it does, the
    CA's stored answers are not served meanwhile (its revocation is signed live), and
    readiness and a metric say so. SHA-384, a form the producer does not pre-produce,
    is never left behind."""
    setup = build_ca(tmp_path / "ca", softhsm)
    state = tmp_path / "state"
    if not disk.mount_tmpfs(state, "4m"):
        pytest.skip("cannot mount a tmpfs to fill (needs root)")
    server = None
    watch = None
    try:
        server = _serve(tmp_path, setup)
        bodies = _bodies(setup, "good", ("sha1", "sha256", "sha384"))
        for body in bodies.values():  # each asked once: stored, or answered live
            assert status_of(server.url, body) is ocsp.OCSPCertStatus.GOOD
        ballast = disk.fill(state)
        watch = Watch([server.url], bodies).start()
        time.sleep(0.5)
        revoked_at = time.monotonic()
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        until(lambda: metric(server, "hsm_ocsp_withdrawals_pending") >= 1, 10)
        code, text = _readyz(server)
        assert code == 503 and "not yet withdrawn" in text, text
        time.sleep(GRACE)
        assert not watch.good_after(revoked_at + GRACE), watch.good_after(revoked_at + GRACE)
        assert "cannot withdraw" in server.log.read_text()
        ballast.unlink()  # space again: the withdrawal commits at its next try
        until(lambda: metric(server, "hsm_ocsp_withdrawals_pending") == 0, 10)
        until(lambda: _readyz(server)[0] == 200, 10)
        for what in bodies:
            until(lambda w=what: watch.last(server.url, w) is REVOKED, 10)
        watch.stop()
        assert not watch.good_after(revoked_at + GRACE)
        assert re.search(r"withdrawals that had failed are committed", server.log.read_text())
    finally:
        if watch is not None:
            watch.stop()
        if server is not None:
            server.stop()
        disk.unmount(state)


def test_a_second_serve_on_the_same_state_dir_is_refused_and_the_first_keeps_its_store(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """Two instances on one state_dir: the second, with an older index, would rewrite
    the first's store. It is refused in one line naming the key; the first answers the
    revocation it took up."""
    setup = build_ca(tmp_path / "ca", softhsm)
    first = _serve(tmp_path, setup)
    try:
        older = tmp_path / "older"  # a copy of the index from before the revocation
        older.mkdir()
        (older / "index.txt").write_bytes(setup.ca.index.read_bytes())
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        bodies = _bodies(setup, "good", ("sha1", "sha256"))
        until(lambda: status_of(first.url, bodies["sha1"]) is REVOKED, 15)
        port = free_port()
        state = f'workers = 2\nstate_dir = "{tmp_path / "state"}"'
        config = write_config(tmp_path / "second.toml", {"root": setup}, port=port, server=state)
        config.write_text(config.read_text().replace(str(setup.ca.index), str(older / "index.txt")))
        second = subprocess.run(
            [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "server.state_dir" in lines[0] and "in use" in lines[0], lines
        assert f"pid {first.process.pid}" in lines[0]
        for _ in range(6):  # both workers, both forms
            for body in bodies.values():
                assert status_of(first.url, body) is REVOKED
    finally:
        first.stop()


def test_remember_keeps_what_an_index_drops_and_releases_only_holds() -> None:
    import datetime as dt

    from hsm_ocsp.core.index import parse_index
    from hsm_ocsp.core.model import Revocation, RevocationReason
    from hsm_ocsp.core.revocation_memory import remember

    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    held = {
        1: Revocation(at, RevocationReason.KEY_COMPROMISE),
        2: Revocation(at, RevocationReason.CERTIFICATE_HOLD, None, "1.2.840.10040.2.3"),
        3: Revocation(at, RevocationReason.SUPERSEDED),
    }
    index = parse_index(
        b"V\t301231235959Z\t\t01\tunknown\t/CN=a\n"  # revoked before, good now: kept
        b"V\t301231235959Z\t\t02\tunknown\t/CN=b\n"  # a hold released
        b"R\t301231235959Z\t260102000000Z,keyCompromise\t04\tunknown\t/CN=d\n"  # new
    )  # serial 3 gone from the file: kept
    found = remember(index, held)
    assert sorted(found.kept) == [1, 3] and found.released == [2]
    assert list(found.new) == [4]
    assert found.snapshot.entries[1] == held[1] and found.snapshot.entries[3] == held[3]
    assert found.snapshot.entries[2] is None
    assert found.snapshot.counts["R"] == 3
    # A hold made final is remembered as final: a later index without it cannot release it.
    final = parse_index(b"R\t301231235959Z\t260103000000Z,keyCompromise\t02\tunknown\t/CN=b\n")
    found = remember(final, held)
    assert list(found.new) == [2] and found.new[2].reason is RevocationReason.KEY_COMPROMISE
    held = {**held, **found.new}
    assert remember(parse_index(b""), held).released == []


def test_a_revocation_survives_an_index_rewritten_in_place_with_a_pause(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A writer that truncates the index and pauses at a line boundary (over the one
    tick an in-place change is given to settle): the half file is read, but a serial
    seen revoked is answered revoked all along, never unknown or good."""
    setup = build_ca(tmp_path / "ca", softhsm)
    server = _serve(tmp_path, setup)
    bodies = {n: _bodies(setup, n, ("sha1",))["sha1"] for n in ("revoked", "keycompromise")}
    watch = Watch([server.url], bodies)
    try:
        for body in bodies.values():
            assert status_of(server.url, body) is REVOKED
        lines = setup.ca.index.read_bytes().splitlines(keepends=True)
        assert b"/CN=keycompromise" in lines[2]
        watch.start()
        with setup.ca.index.open("r+b") as index:
            index.truncate(0)
            index.write(b"".join(lines[:2]))
            index.flush()
            time.sleep(3.0)  # three ticks: the half file is read
            index.write(b"".join(lines[2:]))
        time.sleep(3.0)
        watch.stop()
        assert "no longer shows" in server.log.read_text()
    finally:
        watch.stop()
        server.stop()
    answers = {(what, str(status)) for _, _, what, status in watch.seen}
    assert answers == {(n, str(REVOKED)) for n in bodies}, answers


def test_a_restored_older_index_does_not_unrevoke_until_the_operator_forgets(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """An operator restores index.txt from a backup made before a revocation: the serial
    stays revoked (one warning, a metric); ``hsm-ocsp revocations forget`` and a SIGHUP
    are the explicit way back."""
    setup = build_ca(tmp_path / "ca", softhsm)
    backup = setup.ca.index.read_bytes()
    server = _serve(tmp_path, setup)
    body = _bodies(setup, "good", ("sha256",))["sha256"]
    watch = Watch([server.url], {"good": body})
    try:
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        until(lambda: status_of(server.url, body) is REVOKED, 15)
        watch.start()
        restored = setup.ca.index.with_suffix(".restore")
        restored.write_bytes(backup)
        restored.rename(setup.ca.index)
        until(lambda: metric(server, "hsm_ocsp_index_revocations_dropped") == 1, 10)
        time.sleep(2)
        watch.stop()
        assert {s[3] for s in watch.seen} == {REVOKED}
        assert server.log.read_text().count("no longer shows") == 1
        listed = _cli("revocations", "list", "--config", str(tmp_path / "config.toml"))
        assert f"{setup.serial('good'):X}" in listed.stdout, listed
        serial = f"{setup.serial('good'):X}"
        done = _cli(
            "revocations",
            "forget",
            "--config",
            str(tmp_path / "config.toml"),
            "--ca",
            "root",
            "--serial",
            serial,
        )
        assert done.returncode == 0 and "forgotten" in done.stdout, done
        assert status_of(server.url, body) is REVOKED  # not before the SIGHUP
        os.kill(server.process.pid, signal.SIGHUP)
        until(lambda: status_of(server.url, body) is ocsp.OCSPCertStatus.GOOD, 15)
    finally:
        watch.stop()
        server.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", *args], capture_output=True, text=True, timeout=60
    )


def test_a_bad_record_is_never_served_and_a_damaged_store_is_set_aside(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A record under the wrong key (another serial's signed answer, here a revoked one)
    and bytes that are no record: never served, never a 500; the answer is signed anew.
    A store a power loss damaged (its first pages overwritten): set aside at the next
    start, made anew, every answer produced again; serve does not crash-loop."""
    from hsm_ocsp.core.shared_answers import parse_key
    from hsm_ocsp.store.lmdb_store import LmdbStore

    setup = build_ca(tmp_path / "ca", softhsm)
    server = _serve(tmp_path, setup)
    bodies = _bodies(setup, "good", ("sha1", "sha256"))
    try:
        store = LmdbStore(tmp_path / "state")
        keys: dict[int, list[bytes]] = {}
        for key, _ in store.items():
            parsed = parse_key(key)
            assert parsed is not None
            keys.setdefault(parsed[1], []).append(key)
        good, revoked = keys[setup.serial("good")], keys[setup.serial("revoked")]
        moved = store.get(revoked[0])
        assert moved is not None
        store.put(good[0], moved)  # a signed answer, for another serial, under this key
        store.put(good[1], os.urandom(2000))
        store.close()
        for _ in range(6):
            for body in bodies.values():
                assert status_of(server.url, body) is ocsp.OCSPCertStatus.GOOD
    finally:
        server.stop()
    data = tmp_path / "state" / "answers.lmdb" / "data.mdb"
    with data.open("r+b") as damaged:
        damaged.write(os.urandom(16384))
    server = _serve(tmp_path, setup)  # filled again from nothing
    try:
        assert "cannot be opened" in server.log.read_text()
        assert list((tmp_path / "state").glob("answers.lmdb.damaged-*"))
        for body in bodies.values():
            assert status_of(server.url, body) is ocsp.OCSPCertStatus.GOOD
        assert status_of(server.url, _bodies(setup, "revoked", ("sha1",))["sha1"]) is REVOKED
    finally:
        server.stop()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_link_client_that_never_reads_is_cut_off_and_the_producer_stays_bounded(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A client of the producer link (a worker gone wrong) sends requests and never reads
    the answers: the producer cuts it off past a bound instead of keeping every answer."""
    import socket
    import struct

    setup = build_ca(tmp_path / "ca", softhsm)
    server = _serve(tmp_path, setup)
    try:
        producer = server.producer_pid()
        assert producer is not None
        before = _rss(producer)
        request = _bodies(setup, "good", ("sha1",))["sha1"]
        payload = bytes((0, 0)) + request
        frames = b"".join(struct.pack("!II", len(payload), i) + payload for i in range(2000))
        link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        link.connect(str(tmp_path / "state" / "producer.sock"))
        link.settimeout(5)
        cut = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                link.sendall(frames)
            except TimeoutError:  # the producer busy: it reads on
                continue
            except OSError:  # reset or broken pipe: the producer closed it
                cut = True
                break
        link.close()
        grown = _rss(producer) - before
        assert cut, "the producer kept a client that never reads"
        assert "bytes unread: closing" in server.log.read_text()
        assert grown < 64 << 20, grown
        assert status_of(server.url, request) is ocsp.OCSPCertStatus.GOOD
    finally:
        server.stop()


async def test_an_index_on_a_file_system_that_hangs_holds_its_own_ca_alone(
    tmp_path: Path, softhsm: SoftHSM, aiohttp_client: Any
) -> None:
    """Another CA's index sits on a file system that stops answering (a hard NFS mount;
    here its look at the file blocks): this CA's revocation is still taken up at once,
    and the hung CA answers tryLater once its index goes unlooked-at, with readiness
    saying why, instead of its old index answering on."""
    import asyncio
    import threading

    from hsm_ocsp.config.file import load_config
    from hsm_ocsp.server.app import create_app
    from hsm_ocsp.server.app_state import HOST

    root = build_ca(tmp_path / "root", softhsm)
    other = build_ca(tmp_path / "other", softhsm, name="Other CA")
    config = write_config(
        tmp_path / "config.toml",
        {"root": root, "other": other},
        server=f'state_dir = "{tmp_path / "state"}"',
    )
    app = create_app(load_config(config))
    client = await aiohttp_client(app)
    hang = threading.Event()
    source = app[HOST].sources["other"]
    real = source.check

    def hung(*, force: bool = False) -> bool:
        hang.wait(60)  # the system call that does not return
        return real(force=force)

    async def status(setup: CASetup) -> object:
        body = _bodies(setup, "good", ("sha1",))["sha1"]
        answer = await client.post("/", data=body)
        parsed = ocsp.load_der_ocsp_response(await answer.read())
        if parsed.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return parsed.response_status
        return parsed.certificate_status

    try:
        assert await status(other) is ocsp.OCSPCertStatus.GOOD
        source.check = hung  # type: ignore[method-assign]
        root.ca.revoke(root.certs["good"], "-crl_reason", "keyCompromise")
        for _ in range(50):
            if await status(root) is REVOKED:
                break
            await asyncio.sleep(0.1)
        assert await status(root) is REVOKED
        await asyncio.sleep(VOUCH_FOR + 1)
        assert await status(other) is ocsp.OCSPResponseStatus.TRY_LATER
        ready = await client.get("/readyz")
        assert ready.status == 503 and "has not been looked at" in await ready.text()
    finally:
        hang.set()
