"""The hardening issue, item by item: each test is named after the item it shows.

Real servers on 127.0.0.1, a real SoftHSM token, real index files.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from pytest_aiohttp import AiohttpClient

from hsm_ocsp.config.file import load_config
from hsm_ocsp.core.errors import ConfigError
from hsm_ocsp.server.app import create_app
from hsm_ocsp.server.index_source import IndexSource

from .support.ca import CASetup, build_ca, write_config
from .support.pki import generated_index_lines
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import SoftHSM

OCSP_TYPE = {"Content-Type": "application/ocsp-request"}

Client = TestClient[web.Request, web.Application]


def _post_status(url: str, body: bytes) -> ocsp.OCSPCertStatus:
    req = urllib.request.Request(url, data=body, headers=OCSP_TYPE)
    with urllib.request.urlopen(req, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read()).certificate_status


def _start(
    tmp_path: Path, softhsm: SoftHSM, *, server: str = "", max_fds: int | None = None
) -> tuple[CASetup, RunningServer]:
    """A CA with its index, and ``hsm-ocsp serve`` on a free port for it."""
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=port, server=server)
    return setup, start_server(config, port, tmp_path / "server.log", max_fds=max_fds)


def test_revocation_taken_up_during_a_descriptor_flood(tmp_path: Path, softhsm: SoftHSM) -> None:
    """ulimit -n 256 and more idle connections than that: the revocation still lands."""
    setup, server = _start(tmp_path, softhsm, max_fds=256)
    try:
        body = setup.request("good")
        assert _post_status(server.url, body) is ocsp.OCSPCertStatus.GOOD
        _revoke_during_a_flood(setup, server)
        deadline = time.monotonic() + 5  # until the server has seen the flood close
        while True:
            try:
                status = _post_status(server.url, body)
                break
            except ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert status is ocsp.OCSPCertStatus.REVOKED
    finally:
        server.stop()  # whatever failed: no server outlives the test


def _revoke_during_a_flood(setup: CASetup, server: RunningServer) -> None:
    """400 idle connections hold the server while ``good`` is revoked; the index must be
    taken up while they do."""
    flood: list[socket.socket] = []
    try:
        for _ in range(400):  # idle connections, as a flood leaves them
            try:
                flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
            except OSError:
                break
        time.sleep(0.5)
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        deadline = time.monotonic() + 8  # inside read_timeout (10 s): the flood still holds
        while b"entries" not in server.log.read_bytes().split(b"reloaded", 1)[-1]:
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.2)
        log = server.log.read_text()
        assert "index" in log and "reloaded" in log and "Too many open files" not in log, log
        assert "the cap (server.max_connections)" in log  # it kept descriptors for the index
    finally:
        for sock in flood:
            sock.close()


def test_transient_errors_are_retried_and_a_stale_index_fails_readiness(
    tmp_path: Path,
) -> None:
    """EMFILE on open is retried next tick; a file not taken up for the bound counts as stale."""
    index = tmp_path / "index.txt"
    index.write_text("V\t301231235959Z\t\t01\tunknown\t/CN=a\n")
    source = IndexSource("root", index)
    source.load()
    new = tmp_path / "index.txt.new"
    new.write_text("R\t301231235959Z\t261124011953Z,keyCompromise\t01\tunknown\t/CN=a\n")
    os.replace(new, index)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:  # use up this process's descriptors, as a connection flood does a worker's
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        assert source.check() is False
        assert source.last_error is not None and "Too many open files" in source.last_error
        assert source.stale_for() > 0
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert source.check() is True, "a transient error was set aside as a broken file"
    assert source.snapshot is not None and source.snapshot.entries[1] is not None
    assert source.stale_for() == 0


def test_index_rewritten_in_place_is_not_taken_half_written(tmp_path: Path) -> None:
    lines = [line + "\n" for line in generated_index_lines(2000)]
    index = tmp_path / "index.txt"
    index.write_text("".join(lines))
    source = IndexSource("root", index)
    before = source.load()
    last = int(lines[-1].split("\t")[3], 16)
    assert before.entries[last] is None
    lines[-1] = lines[-1].replace("V\t301231235959Z\t\t", "R\t301231235959Z\t250101000000Z\t")
    text = "".join(lines)
    cut = text.index("\n", len(text) // 2) + 1  # half written, at a line's end
    with index.open("r+") as file:  # in place: same inode, no rename
        file.truncate(0)
        file.write(text[:cut])
        file.flush()
        assert source.check() is False  # not taken while it may still be written
        assert source.snapshot is before
        file.write(text[cut:])
        file.flush()
        assert source.check() is False  # changed again since the last tick
        assert source.snapshot is before
    assert source.check() is True  # held still for a tick: taken whole
    assert source.snapshot is not None and source.snapshot.entries[last] is not None
    assert len(source.snapshot) == len(before)


@pytest.fixture
async def client(
    tmp_path: Path, softhsm: SoftHSM, aiohttp_client: AiohttpClient
) -> tuple[Client, CASetup]:
    setup = build_ca(tmp_path / "ca", softhsm)
    config = write_config(tmp_path / "config.toml", {"root": setup})
    test_client: Client = await aiohttp_client(create_app(load_config(config)))
    return test_client, setup


def test_content_encoding_gets_415_not_500_and_no_traceback(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    setup, server = _start(tmp_path, softhsm)
    port = server.port
    try:
        for encoding in ("gzip", "deflate", "br"):
            req = urllib.request.Request(
                server.url,
                data=b"\x1f\x8b junk",
                headers={**OCSP_TYPE, "Content-Encoding": encoding},
            )
            with pytest.raises(urllib.error.HTTPError) as raised:
                urllib.request.urlopen(req, timeout=10)
            raised.value.close()
            assert raised.value.code == 415, encoding
        req = urllib.request.Request(
            server.url,
            data=setup.request("good"),
            headers={**OCSP_TYPE, "Content-Encoding": "identity"},
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.status == 200
        # A client that leaves mid-body: no 500, no traceback.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
                b"Content-Length: 500\r\n\r\n0\x82"
            )
        time.sleep(0.5)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log and " 500 " not in log, log


def test_same_issuer_twice_is_refused_naming_both(tmp_path: Path, softhsm: SoftHSM) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    config = write_config(tmp_path / "config.toml", {"root": setup, "shadow": setup})
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert raised.value.key == "ca[1].certificate" and "ca[0]" in str(raised.value)


def test_absolute_form_target_and_100_continue_over_the_limit(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    import base64

    setup, server = _start(tmp_path, softhsm)
    port = server.port
    try:
        encoded = base64.b64encode(setup.request("revoked")).decode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"GET http://127.0.0.1:{port}/{encoded} HTTP/1.1\r\nHost: x\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        parsed = ocsp.load_der_ocsp_response(body)
        assert parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert parsed.certificate_status is ocsp.OCSPCertStatus.REVOKED

        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
                b"Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
            )
            first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 413"), first
        assert b"100 Continue" not in first
    finally:
        server.stop()


async def test_server_header_names_no_versions(
    client: tuple[Client, CASetup],
) -> None:
    test_client, setup = client
    for response in (
        await test_client.post("/", data=setup.request("good"), headers=OCSP_TYPE),
        await test_client.get("/healthz"),
        await test_client.get("/nothing-here"),
    ):
        assert response.headers["Server"] == "hsm-ocsp"


def test_headers_are_bounded_and_connections_capped(tmp_path: Path, softhsm: SoftHSM) -> None:
    _, server = _start(tmp_path, softhsm, server="max_connections = 20")
    port = server.port
    held: list[socket.socket] = []
    try:
        # Headers past the bounds: refused with 4xx, not buffered.
        big = b"X-Pad: " + b"a" * 4000 + b"\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
            assert sock.recv(4096).split(b" ", 2)[1].startswith(b"4")
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
            assert sock.recv(4096).split(b" ", 2)[1].startswith(b"4")
        # 20 idle connections lock nobody out: the 21st is answered, an idle one closed.
        for _ in range(20):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).split(b" ", 2)[1] == b"200"
        closed = 0
        for sock in held:
            sock.settimeout(0.5)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
            sock.close()
        assert closed >= 1
        held.clear()
        # 20 connections each inside a request (a POST body still on its way): the 21st
        # is closed at once, without an answer.
        post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
        for _ in range(20):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            held[-1].sendall(post)
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                refused = sock.recv(4096)
            except ConnectionResetError:
                refused = b""
            assert refused == b""
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(0.3)
        with urllib.request.urlopen(server.url + "healthz", timeout=5) as response:
            assert response.status == 200  # room again once they closed
    finally:
        for sock in held:
            sock.close()
        server.stop()


def _processes_of(root: int) -> list[int]:
    """``root`` and every process below it."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            queue.extend(int(c) for c in children)
    return found


def test_pin_leaves_the_environment_no_core_dumps_no_planted_module(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    import subprocess
    import sys

    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, port=port, server="workers = 2"
    )
    planted = tmp_path / "cwd" / "hsm_ocsp"  # a package planted in the working directory
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "pkcs11").mkdir()
    for name in ("pkcs11/__init__.py", "pkcs11/signer_child.py"):
        (planted / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "hsm-ocsp"), "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=planted.parent,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200 and len(_processes_of(process.pid)) >= 5:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        pids = _processes_of(process.pid)  # parent, producer, 2 workers, the producer's signer
        assert len(pids) == 5, pids
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert softhsm.pin.encode() not in environ, pid  # scrubbed where exec put it
            limits = Path(f"/proc/{pid}/limits").read_text()
            core = next(line for line in limits.splitlines() if line.startswith("Max core"))
            assert core.split()[4:6] == ["0", "0"], core
            assert softhsm.pin not in Path(f"/proc/{pid}/cmdline").read_text()
        signers = [
            p
            for p in pids
            if "hsm_ocsp.pkcs11.signer_child" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        assert len(signers) == 1  # workers open no token: the producer alone has a signer
        for pid in signers:  # started after the PIN left the environment: not even its name
            assert b"HSM_OCSP_PIN" not in Path(f"/proc/{pid}/environ").read_bytes()
            assert "\0-I\0" in Path(f"/proc/{pid}/cmdline").read_text()
        assert not marker.exists(), "a module planted in the working directory ran"
    finally:
        os.killpg(process.pid, 15)
        process.wait(20)


def _signed_request(unsigned: bytes, certs: list[bytes]) -> bytes:
    """``unsigned`` with an optionalSignature carrying ``certs`` (DER, valid or not)."""
    from hsm_ocsp.core import der

    outer = der.tlv(0x30, b"")  # the unsigned request is SEQUENCE { tbsRequest }
    assert unsigned[0] == outer[0]
    tbs = unsigned[2:] if unsigned[1] < 0x80 else unsigned[2 + (unsigned[1] & 0x7F) :]
    signature = der.sequence(
        der.sequence(der.oid("1.2.840.113549.1.1.11"), der.null()),  # sha256WithRSAEncryption
        der.bit_string(b"\x01" * 256),
        der.explicit(0, der.sequence(*certs)),
    )
    return der.sequence(tbs, der.explicit(0, signature))


def test_request_signature_and_certificates_are_not_decoded(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A signed request is answered as the unsigned one; its certificates are never parsed.

    Certificates that are not certificates at all show it: decoding them (which cost
    ~20 ms each time) would fail, and the request would be malformed.
    """
    from hsm_ocsp.core.request import decode_request

    setup = build_ca(tmp_path / "ca", softhsm)
    unsigned = setup.request("revoked")
    real = setup.ca.certificate.public_bytes(Encoding.DER)
    not_a_cert = b"\x30\x03\x02\x01\x01"  # SEQUENCE { INTEGER 1 }
    for certs in ([real] * 3, [not_a_cert]):
        signed = _signed_request(unsigned, certs)
        assert decode_request(signed) == decode_request(unsigned)


def test_endless_line_is_refused_without_gathering_it(tmp_path: Path) -> None:
    """A 256 MiB 'line' (a sparse file: no newline anywhere) is refused at its first 4 MiB."""
    import subprocess
    import sys

    index = tmp_path / "index.txt"
    index.write_text("V\t301231235959Z\t\t01\tunknown\t/CN=a\n")
    code = (
        "import os, resource, sys\n"
        "from pathlib import Path\n"
        "from hsm_ocsp.server.index_source import IndexSource\n"
        "path = Path(sys.argv[1])\n"
        "source = IndexSource('root', path)\n"
        "good = source.load()\n"
        "with path.open('r+b') as f: f.truncate(256 << 20)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert source.check() is False and source.check() is False\n"
        "assert source.snapshot is good\n"
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(grew // 1024, source.last_error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(index)], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    grew_mib, error = done.stdout.split(" ", 1)
    assert "line longer than 65536 bytes" in error
    assert int(grew_mib) < 64, f"peak memory grew {grew_mib} MiB reading a 256 MiB line"


def test_index_over_max_index_bytes_is_refused_and_others_reload(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A 20 GB index (sparse) is refused by its size; the other CA reloads; /healthz answers."""
    big = build_ca(tmp_path / "big", softhsm)
    other = build_ca(tmp_path / "other", softhsm, name="Other CA")
    port = free_port()
    config = write_config(tmp_path / "config.toml", {"big": big, "other": other}, port=port)
    server = start_server(config, port, tmp_path / "server.log")
    try:
        body = other.request("good")
        assert _post_status(server.url + "other/", body) is ocsp.OCSPCertStatus.GOOD
        replacement = big.ca.index.with_name("index.txt.new")
        with replacement.open("wb") as file:
            file.truncate(20 << 30)
        os.replace(replacement, big.ca.index)
        other.ca.revoke(other.certs["good"], "-crl_reason", "keyCompromise")
        deadline = time.monotonic() + 10
        while _post_status(server.url + "other/", body) is not ocsp.OCSPCertStatus.REVOKED:
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.2)
        with urllib.request.urlopen(server.url + "healthz", timeout=2) as response:
            assert response.status == 200
        big_body = big.request("revoked")
        assert _post_status(server.url + "big/", big_body) is ocsp.OCSPCertStatus.REVOKED
        assert "over ca.max_index_bytes" in server.log.read_text()
    finally:
        server.stop()


SPY = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so"  # OpenSC's PKCS#11 spy: logs every call


def _logins(spy_log: Path) -> tuple[int, int]:
    """C_Login calls the spy saw from every process, and how many the PIN failed.

    Counted apart: several processes append to the log at once, so a call's lines
    may be interleaved with another's; only C_Login returns CKR_PIN_INCORRECT.
    """
    text = spy_log.read_text() if spy_log.exists() else ""
    return text.count(": C_Login\n"), text.count("CKR_PIN_INCORRECT")


def _spied(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch, workers: int, token: str = ""
) -> tuple[CASetup, Path, int, Path]:
    """A CA and a config whose module is the spy in front of SoftHSM, logging to spy.log."""
    from .support.softhsm import MODULE

    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, port=port, server=f"workers = {workers}"
    )
    text = config.read_text().replace(f'module = "{MODULE}"', f'module = "{SPY}"\n{token}')
    config.write_text(text)
    spy_log = tmp_path / "spy.log"
    monkeypatch.setenv("PKCS11SPY", MODULE)
    monkeypatch.setenv("PKCS11SPY_OUTPUT", str(spy_log))
    return setup, config, port, spy_log


@pytest.mark.skipif(not Path(SPY).exists(), reason="pkcs11-spy (Debian opensc-pkcs11)")
def test_wrong_pin_makes_one_failed_login_per_start_whatever_the_workers(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    pin_file = tmp_path / "pin"
    pin_file.write_text("99999999\n")  # wrong
    pin_file.chmod(0o600)
    _, config, _, spy_log = _spied(tmp_path, softhsm, monkeypatch, 4, 'pin_file = "pin"')
    done = subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # a runtime failure, not the configuration
    assert _logins(spy_log) == (1, 1)  # four workers, one failed login
    assert "the PIN is incorrect" in done.stderr and "no more login attempts" in done.stderr
    assert "99999999" not in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(not Path(SPY).exists(), reason="pkcs11-spy (Debian opensc-pkcs11)")
def test_pin_refused_at_run_time_stops_logins_until_sighup(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PIN changes on the token under a running responder; its signers are replaced."""
    import signal

    import pkcs11

    from .support.softhsm import MODULE

    _, config, port, spy_log = _spied(tmp_path, softhsm, monkeypatch, 2)
    server = start_server(config, port, tmp_path / "server.log")
    token = pkcs11.lib(MODULE).get_token(token_label=softhsm.label)
    try:
        deadline = time.monotonic() + 20
        while _logins(spy_log)[0] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        assert _logins(spy_log) == (1, 0)  # two workers, one signer: the producer's
        with token.open(user_pin=softhsm.pin, rw=True) as session:
            session.set_pin(softhsm.pin, "13572468")
        signers = [
            p
            for p in _processes_of(server.process.pid)
            if "signer_child" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        for pid in signers:
            os.kill(pid, signal.SIGKILL)  # new signers must log in again
        deadline = time.monotonic() + 30  # the token watchers probe within 10 s
        while _logins(spy_log)[0] < 2:
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(4)  # the producer's watcher keeps probing, once a second while down
        assert _logins(spy_log) == (2, 1)  # refused once, never tried again
        ready = urllib.request.Request(server.url + "readyz")
        with urllib.request.urlopen(server.url + "healthz", timeout=5) as response:
            assert b"login refused" in response.read()  # the store answers meanwhile
        with urllib.request.urlopen(server.url + "metrics", timeout=5) as response:
            assert "hsm_ocsp_token_login_refused 1.0" in response.read().decode()
        with token.open(user_pin="13572468", rw=True) as session:
            session.set_pin("13572468", softhsm.pin)  # the operator fixes it...
        os.kill(server.process.pid, signal.SIGHUP)  # ...and reloads
        deadline = time.monotonic() + 10
        while _logins(spy_log)[0] < 3:  # the signer logs in again, with success
            assert time.monotonic() < deadline, _logins(spy_log)
            time.sleep(0.2)
        assert _logins(spy_log) == (3, 1)
        with urllib.request.urlopen(ready, timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()
        with (
            contextlib.suppress(pkcs11.exceptions.PinIncorrect),
            token.open(user_pin="13572468", rw=True) as session,
        ):
            session.set_pin("13572468", softhsm.pin)


def _request_for(setup: CASetup, serials: list[int]) -> bytes:
    """One request for ``serials`` of the CA (issued or not)."""
    from .support.requests import build_request

    return build_request([(setup.ca.certificate, s) for s in serials], algorithm="sha256")


async def test_cache_bounded_in_bytes_and_floods_cannot_evict_issued_serials(
    tmp_path: Path, softhsm: SoftHSM, aiohttp_client: AiohttpClient
) -> None:
    import secrets

    from hsm_ocsp.server.app_state import HOST

    setup = build_ca(tmp_path / "ca", softhsm)
    limit = 256 * 1024
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, server=f"cache_bytes = {limit}"
    )
    client: Client = await aiohttp_client(create_app(load_config(config)))
    service = client.app[HOST].service
    first = {}
    for name in ("good", "revoked", "keycompromise", "superseded"):
        body = setup.request(name)
        first[name] = await (await client.post("/", data=body, headers=OCSP_TYPE)).read()
    for i in range(600):  # random serials, one or ten a request
        serials = [secrets.randbits(64) for _ in range(1 if i % 6 else 10)]
        response = await client.post("/", data=_request_for(setup, serials), headers=OCSP_TYPE)
        assert response.status == 200
        assert service.cache_bytes() <= limit
    for name, answer in first.items():  # still the very answers signed first: cached
        again = await (await client.post("/", data=setup.request(name), headers=OCSP_TYPE)).read()
        assert again == answer, f"{name}'s cached answer was pushed out by the flood"
    assert service.cache_bytes() > limit // 5  # the flood did fill its own part (a quarter)


@pytest.mark.slow
def test_token_watcher_survives_running_out_of_descriptors(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """The signer dies while the worker has no descriptor left to start another: the
    watcher logs it, keeps going, and restores the token once descriptors are back."""
    # No cap and a long read timeout: the flood holds every descriptor until let go.
    options = 'max_connections = 1000\nread_timeout = "60s"'
    _, server = _start(tmp_path, softhsm, server=options, max_fds=128)
    try:
        _kill_the_signer_while_descriptors_run_out(server)
        deadline = time.monotonic() + 8  # a dead watcher would leave /readyz 503
        while True:
            try:
                with urllib.request.urlopen(server.url + "readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.HTTPError, ConnectionError):
                pass
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.3)
    finally:
        server.stop()  # whatever failed: no server outlives the test
    assert "Traceback" not in server.log.read_text()


def _kill_the_signer_while_descriptors_run_out(server: RunningServer) -> None:
    import signal

    flood: list[socket.socket] = []
    try:
        signers = [
            p
            for p in _processes_of(server.process.pid)
            if "signer_child" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        assert len(signers) == 1
        for _ in range(200):  # more than the worker's 128 descriptors
            try:
                flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
            except OSError:
                break
        time.sleep(1.0)
        used = len(list(Path(f"/proc/{server.process.pid}/fd").iterdir()))
        assert used >= 120, f"the worker holds {used} of 128 descriptors"
        os.kill(signers[0], signal.SIGKILL)
        time.sleep(12)  # the watcher (10 s between probes while up) tries to start a signer
    finally:
        for sock in flood:
            sock.close()


def test_metrics_on_the_main_listener_is_said_in_the_log(tmp_path: Path, softhsm: SoftHSM) -> None:
    _, server = _start(tmp_path / "open", softhsm)
    server.stop()
    assert "set [server] metrics_listen to a private address" in server.log.read_text()
    private = f'metrics_listen = "127.0.0.1:{free_port()}"'
    _, server = _start(tmp_path / "private", softhsm, server=private)
    try:
        with urllib.request.urlopen(server.url + "metrics", timeout=5) as response:
            assert b"hsm_ocsp_" not in response.read()  # not on the main listener
    finally:
        server.stop()
    assert "metrics_listen" not in server.log.read_text().split("listening on", 1)[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_unfinished_headers_cost_bounded_memory_that_returns(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """300 connections each stop half-way through the most headers the limits allow."""
    _, server = _start(tmp_path, softhsm, server="max_connections = 400")
    pid = server.process.pid
    held: list[socket.socket] = []
    try:
        before = _rss_mib(pid)
        header = b"X-Pad-%03d: " + b"a" * 1900 + b"\r\n"
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\n" + b"".join(header % i for i in range(30))
            )
            held.append(sock)
        time.sleep(1.0)
        during = _rss_mib(pid)
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(1.0)
        after = _rss_mib(pid)
        with urllib.request.urlopen(server.url + "healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()
    print(f"RSS MiB: {before:.0f} before, {during:.0f} with 300 half-sent, {after:.0f} after")
    assert during - before < 64, (before, during)
    assert after - before < 32, (before, during, after)


def test_an_index_not_taken_up_past_the_bound_fails_readiness(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """server.index_stale_after: /readyz 503 and hsm_ocsp_index_stale 1 past it, back after."""
    setup, server = _start(tmp_path, softhsm, server='index_stale_after = "2s"')

    def ready() -> int:
        try:
            with urllib.request.urlopen(server.url + "readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    def stale() -> str:
        with urllib.request.urlopen(server.url + "metrics", timeout=5) as response:
            text = str(response.read().decode())
        return next(x for x in text.splitlines() if x.startswith('hsm_ocsp_index_stale{ca="root"}'))

    try:
        good = setup.ca.index.read_bytes()
        broken = setup.ca.index.with_name("index.txt.new")
        broken.write_bytes(good + b"V\tnot-a-date\t\t0BAD\tunknown\t/CN=x\n")
        os.replace(broken, setup.ca.index)
        time.sleep(1.2)
        assert ready() == 200  # within the bound: the last good index serves, still ready
        deadline = time.monotonic() + 10
        while ready() != 503:
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1.2)  # the watcher's tick sets the gauge
        assert stale().endswith(" 1.0")
        repaired = setup.ca.index.with_name("index.txt.new")
        repaired.write_bytes(good)
        os.replace(repaired, setup.ca.index)
        deadline = time.monotonic() + 10
        while ready() != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.2)
        assert stale().endswith(" 0.0")
    finally:
        server.stop()
