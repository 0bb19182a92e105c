"""Benchmark hsm-ocsp against ``openssl ocsp -multi 2`` and a bare aiohttp server.

    python benchmarks/run.py            # full run, about 6 minutes; writes BENCHMARKS.md
    python benchmarks/run.py --quick    # 2 s a case, prints only (a smoke test)
    python benchmarks/run.py --seconds 8 --algorithms rsa-2048

Run as root from the repository root. The script re-executes itself inside a
new network namespace (``unshare -n``, loopback only), because ``openssl ocsp
-port`` binds every address; everything it starts listens on 127.0.0.1 there.

In one run it makes a SoftHSM token (``softhsm/init-token.sh``) and, for each
key algorithm, a CA (``openssl ca``) whose index has 10,000 lines (a few real
certificates, the rest generated in OpenSSL's format), a responder key on the
token for hsm-ocsp and a key file of the same algorithm for the peer. Then it
starts three servers side by side, each with 2 processes: hsm-ocsp (2 workers,
its producer once the store is full, and ``token.sessions = 2`` signer processes, as
many as the 2 workers had before the producer), ``openssl
ocsp -multi 2`` and a bare aiohttp server answering a fixed body of the size
of hsm-ocsp's answer (the HTTP ceiling), and drives each with the same wrk
command and the same requests, one server right after the other per case and
each case in two halves, servers in the order A B C then C B A, so that the
machine's noise, even when it rises or falls during a case, hits all three
alike. Cases, 50 connections:

- cached POST, keep-alive (one good serial, no nonce);
- cached GET, keep-alive;
- cached POST, a new connection per request (``Connection: close``);
- (``openssl ocsp`` is started before each of its runs and stopped right
  after: once wrk drops its connections at the end of a run, the peer answers
  nothing more and its workers spin on a core, which would slow every server
  measured after it)
- nonce POST, keep-alive: 20,000 distinct requests with a nonce, every one
  signed; only answers that are successful count (a ``tryLater`` under load is an
  error in the table). The bare server here signs too (``bare+sign``: 300 bytes
  with the responder key, in its handler, on a session of each of its 2
  processes, as the raw loop signs): HTTP and one signature an answer, nothing
  else, the most an aiohttp server that signs every answer with 2 signing
  processes can reach on these CPUs. It and ``openssl ocsp`` are reported
  against the raw rate as bounds, with no target;
- raw token rate: 2 processes signing in a python-pkcs11 loop, hashing and
  preparing each input as the responder does;
- the nonce case and the raw rate again with a token that has a CPU of its own,
  as an HSM has: the signer processes alone on the last CPU, everything else
  (wrk, workers, producer) on the others. SoftHSM signs on the host's CPU, so in
  the shared case every microsecond the responder spends around a signature is
  taken from the token. The bare server (nothing signed) on those other CPUs is
  that setting's HTTP ceiling, and hsm-ocsp's cached POST answers there (nothing
  signed either) the ceiling of its own front: bounds with no target.

Every process the script starts is stopped by its PID (or its own process
group) at the end, and all load is bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.softhsm import use_softhsm_token

HERE = Path(__file__).resolve().parent
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "53618297"
SO_PIN = "90817263"
LABEL = "bench"
INDEX_LINES = 10_000
NONCE_REQUESTS = 20_000
CONNECTIONS = 50
NS_MARK = "HSM_OCSP_BENCH_NETNS"

TARGETS = {
    "keepalive_vs_openssl": 5.0,
    "keepalive_vs_bare": 0.60,
    "newconn_vs_openssl": 1.5,
    "nonce_vs_raw": 0.80,
    "p99_vs_openssl": 0.5,
}


# --- set-up ---------------------------------------------------------------


# What follows this line in BENCHMARKS.md is the other benchmarks' (a run keeps it).
OTHERS = "<!-- other benchmarks, kept by run.py -->"


def make_token(tmp: Path) -> None:
    conf = tmp / "softhsm2.conf"
    use_softhsm_token(conf, label=LABEL, pin=PIN, so_pin=SO_PIN)


@dataclasses.dataclass
class Setup:
    algorithm: str
    directory: Path
    ca_cert: Path
    index: Path
    key_label: str
    responder_cert: Path
    peer_cert: Path
    peer_key: Path
    cached_post: Path  # files of hex lines for wrk
    cached_get: Path
    nonce_post: Path
    cached_der: bytes
    nonce_der: bytes
    nonce: bytes


def make_ca(tmp: Path, algorithm: str) -> Setup:
    import pkcs11
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from hsm_ocsp.pkcs11.keys import generate_key_pair, public_key_from_token
    from tests.support.pki import OpenSSLCA, generated_index_lines
    from tests.support.requests import build_request

    directory = tmp / algorithm
    ca = OpenSSLCA(directory, f"Bench {algorithm} CA")
    good = ca.issue("good")
    revoked = ca.issue("revoked")
    ca.revoke(revoked, "-crl_reason", "keyCompromise")
    ca.issue("other")
    with ca.index.open("a") as out:
        real = len(ca.index.read_text().splitlines())
        out.write("\n".join(generated_index_lines(INDEX_LINES - real)) + "\n")

    label = f"responder-{algorithm}"
    lib = pkcs11.lib(MODULE)
    with lib.get_token(token_label=LABEL).open(user_pin=PIN, rw=True) as session:
        public, _private, _ = generate_key_pair(session, algorithm, label=label, key_id=None)
        token_public = public_key_from_token(public)
    responder_cert = ca.sign_responder(token_public, "OCSP Responder")

    peer: Any = (
        rsa.generate_private_key(65537, 2048)
        if algorithm.startswith("rsa")
        else ec.generate_private_key(ec.SECP256R1())
    )
    peer_key = directory / "peer.key"
    peer_key.write_bytes(
        peer.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    peer_cert = ca.sign_responder(peer.public_key(), "OCSP Peer")

    serial = ca.serial_of(good)
    issuer = ca.certificate
    cached_der = build_request([(issuer, serial)], algorithm="sha256")
    encoded = urllib.parse.quote(base64.b64encode(cached_der).decode(), safe="")
    nonces = [secrets.token_bytes(32) for _ in range(NONCE_REQUESTS)]
    nonce_ders = [build_request([(issuer, serial)], algorithm="sha256", nonce=n) for n in nonces]
    files = {
        "cached_post": [cached_der.hex()],
        "cached_get": [("/" + encoded).encode().hex()],
        "nonce_post": [d.hex() for d in nonce_ders],
    }
    for name, lines in files.items():
        (directory / f"{name}.hex").write_text("\n".join(lines) + "\n")
    return Setup(
        algorithm=algorithm,
        directory=directory,
        ca_cert=ca.cert_path,
        index=ca.index,
        key_label=label,
        responder_cert=responder_cert,
        peer_cert=peer_cert,
        peer_key=peer_key,
        cached_post=directory / "cached_post.hex",
        cached_get=directory / "cached_get.hex",
        nonce_post=directory / "nonce_post.hex",
        cached_der=cached_der,
        nonce_der=nonce_ders[0],
        nonce=nonces[0],
    )


# --- servers --------------------------------------------------------------


@dataclasses.dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM to the process group this server was started in, then SIGKILL."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers of a -multi parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(name: str, argv: list[str], log: Path, port: int, ready_path: str) -> Server:
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, process_group=0
        )  # its own group, not session: openssl -multi calls setpgid() itself
    server = Server(name, port, process, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=1):
                return server
        except urllib.error.HTTPError:
            if ready_path != "/readyz":
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise SystemExit(f"{name} not ready in 30 s: {log.read_text()}")


def config_text(
    setup: Setup, port: int, *, server: str = "workers = 2", producer: str = "",
    token: str = f'module = "{MODULE}"\nsessions = 2',
) -> str:  # fmt: skip
    """The responder's configuration for ``setup`` (the other benchmarks change parts)."""
    return "\n".join(
        [
            "[server]",
            f'listen = "127.0.0.1:{port}"',
            server,
            "",
            "[producer]",
            producer,
            "",
            "[token]",
            token,
            "",
            "[[ca]]",
            'name = "bench"',
            f'certificate = "{setup.ca_cert}"',
            f'index = "{setup.index}"',
            f'responder_certificate = "{setup.responder_cert}"',
            f'key = "pkcs11:token={LABEL};object={setup.key_label}"',
            "",
        ]
    )


def start_hsm_ocsp(setup: Setup, tmp: Path) -> Server:
    port = free_port()
    config = setup.directory / "hsm-ocsp.toml"
    config.write_text(config_text(setup, port))
    argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
    server = start("hsm-ocsp", argv, setup.directory / "hsm-ocsp.log", port, "/readyz")
    wait_for_fill(port, 2 * INDEX_LINES)
    return server


def wait_for_fill(port: int, records: int, timeout: float = 600) -> None:
    """Measure the steady state: the producer has signed every serial ahead (SHA-1 and
    SHA-256 CertIDs), so the fill does not compete with the load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("hsm_ocsp_store_records ") and float(line.split()[1]) >= records:
                    return
        time.sleep(0.5)
    raise SystemExit(f"the store did not fill to {records} records in {timeout} s")


def start_openssl(setup: Setup) -> Server:
    port = free_port()
    argv = [
        "openssl", "ocsp", "-index", str(setup.index), "-CA", str(setup.ca_cert),
        "-rsigner", str(setup.peer_cert), "-rkey", str(setup.peer_key),
        "-port", str(port), "-multi", "2", "-nmin", "60", "-ignore_err",
    ]  # fmt: skip
    return start("openssl", argv, setup.directory / "openssl.log", port, "/")


def start_bare(setup: Setup, size: int, sign: bool = False) -> Server:
    """``sign``: the bare server signs for every request too (bare_server.py --sign)."""
    port = free_port()
    argv = [
        sys.executable, str(HERE / "bare_server.py"),
        "--port", str(port), "--size", str(size), "--workers", "2",
        *(["--sign", setup.key_label] if sign else []),
    ]  # fmt: skip
    name = SIGNING_BARE if sign else "bare"
    return start(name, argv, setup.directory / f"{name.replace(' ', '-')}.log", port, "/")


def post(port: int, body: bytes) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/",
        data=body,
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        data: bytes = answer.read()
        return data


def check_answers(setup: Setup, servers: dict[str, Server]) -> int:
    """Both responders say 'good' and echo the nonce; returns hsm-ocsp's body size."""
    from cryptography import x509
    from cryptography.x509 import ocsp

    for name in ("hsm-ocsp", "openssl"):
        port = servers[name].port
        cached = ocsp.load_der_ocsp_response(post(port, setup.cached_der))
        if cached.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise SystemExit(f"{name}: {cached.response_status} for the cached request")
        if cached.certificate_status != ocsp.OCSPCertStatus.GOOD:
            raise SystemExit(f"{name}: {cached.certificate_status} for a good serial")
        fresh = ocsp.load_der_ocsp_response(post(port, setup.nonce_der))
        nonce = fresh.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        if nonce != setup.nonce:
            raise SystemExit(f"{name}: the nonce is not echoed")
    return len(post(servers["hsm-ocsp"].port, setup.cached_der))


# --- load -----------------------------------------------------------------


@dataclasses.dataclass
class Result:
    algorithm: str
    case: str
    server: str
    rate: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0


def wrk(
    port: int, requests: Path, method: str, close: bool, seconds: float, count: bool = False
) -> dict[str, Any]:
    """``count``: also count answers that are not successful OCSP (tryLater under load)."""
    argv = [
        "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "5s",
        "-s", str(HERE / "wrk.lua"), f"http://127.0.0.1:{port}/",
        "--", str(requests), method, "close" if close else "keep", "count" if count else "",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    line = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not line:
        raise SystemExit(f"wrk failed: {done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(line[-1])
    return result


SIGNING_BARE = "bare+sign"
CASES = [
    # name, requests attribute, method, new connection, servers
    ("cached POST keep-alive", "cached_post", "POST", False, ("hsm-ocsp", "openssl", "bare")),
    ("cached GET keep-alive", "cached_get", "GET", False, ("hsm-ocsp", "openssl", "bare")),
    ("cached POST new conn", "cached_post", "POST", True, ("hsm-ocsp", "openssl", "bare")),
    ("nonce POST keep-alive", "nonce_post", "POST", False, ("hsm-ocsp", "openssl", SIGNING_BARE)),
]


def run_cases(setup: Setup, servers: dict[str, Server], seconds: float) -> Iterator[Result]:
    """Each case in two halves, servers in the order A B C then C B A.

    Load from other work that rises or falls during a case then hits every
    server alike; one pass A B C gave the last server a different machine.
    A server's rate is its requests over its time in both halves; p50 and
    p99 are the means of the two halves'.
    """
    for name, attribute, method, close, which in CASES:
        runs: dict[str, list[dict[str, Any]]] = {server: [] for server in which}
        for server in [*which, *reversed(which)]:
            if server == "openssl":  # it hangs once wrk drops connections mid-request
                servers["openssl"].stop()
                servers["openssl"] = start_openssl(setup)
            signed = attribute == "nonce_post"  # count only answers that were signed
            out = wrk(servers[server].port, getattr(setup, attribute), method, close,
                      seconds / 2, count=signed)  # fmt: skip
            runs[server].append(out)
            if server == "openssl":  # and once wrk is gone it spins on a core: stop it now
                servers["openssl"].stop()
        for server in which:
            yield result_of(setup.algorithm, name, server, runs[server])


def result_of(algorithm: str, case: str, server: str, outs: list[dict[str, Any]]) -> Result:
    """One server's result from its wrk runs (printed as it comes)."""
    errors = sum(
        o[k]
        for o in outs
        for k in ("connect", "read", "write", "status", "timeout", "unsuccessful")
    )
    good = sum(o["requests"] - o["unsuccessful"] for o in outs)  # tryLater is no answer
    result = Result(
        algorithm,
        case,
        server,
        good / (sum(o["duration_us"] for o in outs) / 1e6),
        sum(o["p50_us"] for o in outs) / len(outs) / 1000,
        sum(o["p99_us"] for o in outs) / len(outs) / 1000,
        errors,
    )
    parts = " + ".join(
        f"{(o['requests'] - o['unsuccessful']) / (o['duration_us'] / 1e6):,.0f}" for o in outs
    )
    print(f"  {result.case:<24} {server:<9} {result.rate:>9,.0f}/s ({parts})", flush=True)
    return result


def signing_key(label: str) -> tuple[Any, Any, Any, Any]:
    """(session, key, scheme, mechanism) of the responder key ``label`` on the bench token,
    signing as the responder does: what the raw loop and the signing bare server use."""
    import pkcs11
    from pkcs11 import Mechanism, ObjectClass

    from hsm_ocsp.core.signing import scheme_for_public_key
    from hsm_ocsp.pkcs11.keys import public_key_from_token

    # SoftHSM can fail a log-in racing another process's, and a process that has just
    # left the token (a signer process of a server stopped a moment ago) can leave its
    # files looking empty to a module that reads them then: it reads them only once.
    for attempt in range(20):
        try:
            session = pkcs11.lib(MODULE).get_token(token_label=LABEL).open(user_pin=PIN)
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
            scheme = scheme_for_public_key(public_key_from_token(public))
            mechanism = Mechanism[scheme.mechanism]
            key.sign(scheme.prepare(b"warm-up"), mechanism=mechanism)
            return session, key, scheme, mechanism
        except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinLocked):
            raise  # never a wrong PIN twice: it would lock the token
        except pkcs11.PKCS11Error:
            if attempt == 19:
                raise
            time.sleep(0.25 + random.random() / 4)
            pkcs11.lib(MODULE).reinitialize()  # the module read the token's files once
    raise AssertionError("unreachable")


def sign_loop(label: str, seconds: float, start_at: float) -> None:
    """One process of the raw rate: sign as the responder does, from ``start_at`` on."""
    import pkcs11
    from pkcs11 import ObjectClass

    session, key, scheme, mechanism = signing_key(label)
    data = secrets.token_bytes(300)  # about the size of a ResponseData
    time.sleep(max(0.0, start_at - time.time()))
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            scheme.finish(key.sign(scheme.prepare(data), mechanism=mechanism))
        except pkcs11.exceptions.ObjectHandleInvalid:
            # SoftHSM re-reads its token files when another process changed them, and
            # a handle found before may go stale (seen once in nonce_cost.py): find it again.
            with contextlib.suppress(pkcs11.exceptions.NoSuchKey):  # not yet: try again
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            continue
        count += 1
    session.close()
    print(count / seconds)


def raw_rate(
    setup: Setup, seconds: float, processes: int = 2, case: str = "raw token signing"
) -> Result:
    argv = [
        sys.executable, __file__, "--sign-loop", setup.key_label, "--seconds", str(seconds),
        "--start-at", str(time.time() + 3),
    ]  # fmt: skip
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    total = 0.0
    for child in children:
        out, _ = child.communicate(timeout=seconds + 30)
        total += float(out.strip().splitlines()[-1])
    result = Result(setup.algorithm, case, f"pkcs11 x{processes}", total)
    print(f"  {result.case:<24} {result.server:<9} {result.rate:>9,.0f}/s", flush=True)
    return result


# --- a token with a CPU of its own ------------------------------------------

NONCE_OWN = "nonce POST, token own CPU"
CACHED_HOST = "cached POST, host CPU"
RAW_OWN = "raw signing, own CPU"


def token_cpus() -> set[int] | None:
    """The last CPU, for signer processes only, when another is left for the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[-1]} if len(cpus) >= 2 else None


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` to ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def cpus_of_children(cpus: set[int] | None) -> Iterator[None]:
    """Processes started meanwhile run on ``cpus`` (on all of this one's when None)."""
    if cpus is None:
        yield
        return
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, everything)


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def signer_pids(server_pid: int) -> list[int]:
    """The signer processes: the children of the server's child that has any (the producer)."""
    return [signer for pid in children(server_pid) for signer in children(pid)]


def gone(pids: list[int], timeout: float = 10) -> None:
    """Wait until none of ``pids`` runs: a signer process may outlive its server briefly."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def nonce_own_cpu(
    setup: Setup, tmp: Path, seconds: float, token: set[int], size: int
) -> Iterator[Result]:
    """Nonce answers and the raw rate with a token that has hardware of its own.

    SoftHSM signs on the host's CPU: in the shared case every microsecond of
    wrk, the workers and the producer is taken from the token, which an HSM
    does not share. Here the signer processes (the responder's two, then the
    raw loop's two) run alone on ``token``, everything else on the other CPUs.
    The bare server (answers of ``size`` bytes, nothing signed) on those other
    CPUs is the most any HTTP front on them could carry; hsm-ocsp's cached answers
    there, which need no signature, what its own front carries at most.
    """
    host = os.sched_getaffinity(0) - token
    with cpus_of_children(host):
        server = start_hsm_ocsp(setup, tmp)
    signers: list[int] = []
    try:
        signers = signer_pids(server.process.pid)
        for pid in signers:
            pin(pid, token)
        with cpus_of_children(host):
            out = wrk(server.port, setup.nonce_post, "POST", False, seconds, count=True)
            cached = wrk(server.port, setup.cached_post, "POST", False, seconds)
    finally:
        server.stop()
        gone(signers)
    yield result_of(setup.algorithm, NONCE_OWN, "hsm-ocsp", [out])
    yield result_of(setup.algorithm, CACHED_HOST, "hsm-ocsp", [cached])
    with cpus_of_children(host):  # the HTTP ceiling of the CPUs left to the host
        bare = start_bare(setup, size)
        try:
            out = wrk(bare.port, setup.nonce_post, "POST", False, seconds, count=True)
        finally:
            bare.stop()
    yield result_of(setup.algorithm, NONCE_OWN, "bare", [out])
    with cpus_of_children(token):
        yield raw_rate(setup, seconds, case=RAW_OWN)


# --- report ---------------------------------------------------------------


def _find(results: list[Result], algorithm: str, case: str, server: str) -> Result | None:
    for r in results:
        if (r.algorithm, r.case, r.server) == (algorithm, case, server):
            return r
    return None


def _rate(results: list[Result], algorithm: str, case: str, server: str) -> float:
    r = _find(results, algorithm, case, server)
    return r.rate if r and r.rate else float("nan")


def bounds(results: list[Result], algorithm: str) -> list[tuple[str, float, str, str]]:
    """Rows with no target: what a server that only parses, signs and sends reaches."""
    nonce = "nonce POST keep-alive"

    def rate(case: str, server: str) -> float:
        return _rate(results, algorithm, case, server)

    rows = []
    raw = _rate(results, algorithm, "raw token signing", "pkcs11 x2")
    for server, what in ((SIGNING_BARE, "bare aiohttp signing inline"), ("openssl", "openssl")):
        rows.append(
            (f"{nonce}: {what} / raw token rate (a bound)", rate(nonce, server) / raw, "-", "bound")
        )
    own = _find(results, algorithm, RAW_OWN, "pkcs11 x2")
    if own is not None:
        for case, server, what in (
            (NONCE_OWN, "bare", "bare aiohttp"),
            (CACHED_HOST, "hsm-ocsp", "hsm-ocsp cached POST"),
        ):
            rows.append(
                (f"{NONCE_OWN}: {what} on the host CPU / raw rate on the token CPU (a bound)",
                 rate(case, server) / own.rate, "-", "bound")
            )  # fmt: skip
    return rows


def verdicts(results: list[Result], algorithm: str) -> list[tuple[str, float, str, bool | None]]:
    def rate(case: str, server: str) -> float:
        return _rate(results, algorithm, case, server)

    keep, new, nonce = "cached POST keep-alive", "cached POST new conn", "nonce POST keep-alive"
    get = "cached GET keep-alive"
    rows = []
    for case in (keep, get):
        rows.append(
            (f"{case}: hsm-ocsp / openssl", rate(case, "hsm-ocsp") / rate(case, "openssl"),
             f">= {TARGETS['keepalive_vs_openssl']:g}", "keepalive_vs_openssl")
        )  # fmt: skip
        rows.append(
            (f"{case}: hsm-ocsp / bare aiohttp", rate(case, "hsm-ocsp") / rate(case, "bare"),
             f">= {TARGETS['keepalive_vs_bare']:.0%}", "keepalive_vs_bare")
        )  # fmt: skip
    rows.append(
        (f"{new}: hsm-ocsp / openssl", rate(new, "hsm-ocsp") / rate(new, "openssl"),
         f">= {TARGETS['newconn_vs_openssl']:g}", "newconn_vs_openssl")
    )  # fmt: skip
    for case, raw_case, what in (
        (nonce, "raw token signing", "raw token rate"),
        (NONCE_OWN, RAW_OWN, "raw rate on that CPU"),
    ):
        raw = _find(results, algorithm, raw_case, "pkcs11 x2")
        if raw is None and case == NONCE_OWN:
            continue  # one CPU: nothing to give the token
        rows.append(
            (f"{case}: hsm-ocsp / {what}",
             rate(case, "hsm-ocsp") / (raw.rate if raw else float("nan")),
             f">= {TARGETS['nonce_vs_raw']:.0%}", "nonce_vs_raw")
        )  # fmt: skip
    rows += bounds(results, algorithm)
    for case in (keep, get):
        ours, peer = (
            _find(results, algorithm, case, "hsm-ocsp"),
            _find(results, algorithm, case, "openssl"),
        )
        p99 = float("nan")
        if ours and peer and ours.p99_ms is not None and peer.p99_ms:
            p99 = ours.p99_ms / peer.p99_ms
        rows.append(
            (f"{case}: p99 hsm-ocsp / openssl (c={CONNECTIONS})", p99,
             f"<= {TARGETS['p99_vs_openssl']:g}", "p99_vs_openssl")
        )  # fmt: skip
    out: list[tuple[str, float, str, bool | None]] = []
    for label, value, target, key in rows:
        ok = None if key == "bound" else value >= TARGETS[key]
        if key == "p99_vs_openssl":
            ok = value <= TARGETS[key]
        out.append((label, value, target, ok))
    return out


def machine() -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        return (done.stdout or done.stderr).strip().splitlines()[0]

    from importlib.metadata import version as pkg

    return [
        f"- CPU: {os.cpu_count()} x {cpu} (nproc {len(os.sched_getaffinity(0))}),"
        f" {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; aiohttp {pkg('aiohttp')},"
        f" python-pkcs11 {pkg('python-pkcs11')}, cryptography {pkg('cryptography')},"
        f" asn1crypto {pkg('asn1crypto')}, uvloop {pkg('uvloop')}",
        f"- {version('openssl', 'version')}; SoftHSM {version('softhsm2-util', '--version')};"
        f" {version('wrk', '-v')}",
    ]


def table(results: list[Result], algorithms: list[str]) -> list[str]:
    lines = [
        "| key | case | server | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        p50 = f"{r.p50_ms:.2f}" if r.p50_ms is not None else ""
        p99 = f"{r.p99_ms:.2f}" if r.p99_ms is not None else ""
        lines.append(
            f"| {r.algorithm} | {r.case} | {r.server} | {r.rate:,.0f} | {p50} | {p99} |"
            f" {r.errors if r.p50_ms is not None else ''} |"
        )
    lines += ["", "| key | ratio | measured | target | met |", "|---|---|---:|---|---|"]
    for algorithm in algorithms:
        for label, value, target, ok in verdicts(results, algorithm):
            lines.append(
                f"| {algorithm} | {label} | {value:.2f} | {target} |"
                f" {'-' if ok is None else 'yes' if ok else 'NO'} |"
            )
    return lines


# --- main -----------------------------------------------------------------


def reexec_in_namespace() -> None:
    """Run this script again in a new network namespace with only loopback up."""
    if os.environ.get(NS_MARK) or os.geteuid() != 0 or not shutil.which("unshare"):
        return
    os.environ[NS_MARK] = "1"
    script = 'ip link set lo up && exec "$@"'
    argv = ["unshare", "-n", "sh", "-c", script, "sh", sys.executable, *sys.argv]
    os.execvp("unshare", argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s a case; no BENCHMARKS.md")
    parser.add_argument("--seconds", type=float, help="length of each case (default 6)")
    parser.add_argument("--algorithms", default="rsa-2048,ec-p256")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of hsm-ocsp and the bare server (default: uvloop, as served)",
    )
    parser.add_argument("--sign-loop", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    if args.sign_loop:
        sign_loop(args.sign_loop, seconds, args.start_at)
        return 0
    reexec_in_namespace()
    os.environ["HSM_OCSP_EVENT_LOOP"] = args.loop  # hsm-ocsp and the bare server read it
    for tool in ("wrk", "openssl", "softhsm2-util"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")
    algorithms = args.algorithms.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="hsm-ocsp-bench-"))
    started = time.monotonic()
    load_before = os.getloadavg()
    results: list[Result] = []
    try:
        make_token(tmp)
        for algorithm in algorithms:
            print(f"{algorithm}: setting up", flush=True)
            setup = make_ca(tmp, algorithm)
            servers: dict[str, Server] = {}
            try:
                servers["hsm-ocsp"] = start_hsm_ocsp(setup, tmp)
                servers["openssl"] = start_openssl(setup)
                size = check_answers(setup, servers)
                servers["bare"] = start_bare(setup, size)
                servers[SIGNING_BARE] = start_bare(setup, size, sign=True)
                results.extend(run_cases(setup, servers, seconds))
            finally:
                for server in servers.values():
                    server.stop()
            results.append(raw_rate(setup, seconds))
            token = token_cpus()
            if token is not None:
                results.extend(nonce_own_cpu(setup, tmp, seconds, token, size))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        "# Benchmarks",
        "",
        f"`python benchmarks/run.py{' --loop asyncio' if args.loop == 'asyncio' else ''}`"
        f" ({when}; event loop {args.loop}; {seconds:g} s a case and server, in two halves",
        f"run A B C then C B A; {CONNECTIONS} connections, `wrk -t1 -c{CONNECTIONS}` for every",
        f"server; {INDEX_LINES:,}-line index; every server",
        "2 processes; run took "
        f"{time.monotonic() - started:.0f} s; load average {load_before[0]:.1f} before,"
        f" {load_after[0]:.1f} after: other work shared the cores, so compare the ratios,"
        " which are measured side by side, rather than the absolute figures).",
        "",
        *machine(),
        "",
        *table(results, algorithms),
        "",
    ]
    print("\n".join(report))
    if not args.quick:
        output = Path(args.output)
        kept = output.read_text().partition(OTHERS)[2] if output.exists() else ""
        output.write_text("\n".join(report) + ("\n" + OTHERS + kept if kept else ""))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
