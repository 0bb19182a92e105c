"""Real parts for the tests: a SoftHSM token, CAs made by ``openssl ca``."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest

from hsm_ocsp.demo import use_softhsm_token
from hsm_ocsp.keys import generate_key_pair, public_key_from_token
from hsm_ocsp.pkcs11_uri import Pkcs11Uri

from .pki import OpenSSLCA

ROOT = Path(__file__).resolve().parent.parent
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "71942563"
SO_PIN = "88113355"
TOKEN_LABEL = "hsm-ocsp-test"
_labels = itertools.count(1)


@dataclasses.dataclass
class SoftHSM:
    conf: Path
    label: str
    module: str = MODULE
    pin: str = PIN

    def session(self) -> Any:
        return (
            pkcs11.lib(self.module)
            .get_token(token_label=self.label)
            .open(user_pin=self.pin, rw=True)
        )

    def make_key(self, algorithm: str = "ec-p256", label: str | None = None) -> tuple[str, Any]:
        """A key pair on the token; returns (URI, cryptography public key)."""
        label = label or f"key{next(_labels)}-{os.getpid()}"
        with self.session() as session:
            public, _private, _ = generate_key_pair(session, algorithm, label=label, key_id=None)
            public_key = public_key_from_token(public)
        return str(Pkcs11Uri(token=self.label, object=label)), public_key

    def import_key(self, key_pem: bytes, label: str) -> str:
        """Put a software EC key on the token (for a CA that signs its own responses)."""
        from cryptography.hazmat.primitives import serialization
        from pkcs11 import Attribute
        from pkcs11.util.ec import decode_ec_private_key

        key = serialization.load_pem_private_key(key_pem, None)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        attrs = decode_ec_private_key(der)
        attrs.update(
            {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.SIGN: True,
                Attribute.LABEL: label,
                Attribute.ID: label.encode(),
            }
        )
        with self.session() as session:
            session.create_object(attrs)
        return str(Pkcs11Uri(token=self.label, object=label))


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    """One SoftHSM token for the test session, made by hsm_ocsp/data/init-token.sh."""
    directory = tmp_path_factory.mktemp("softhsm")
    conf = directory / "softhsm2.conf"
    use_softhsm_token(conf, label=TOKEN_LABEL, pin=PIN, so_pin=SO_PIN)
    return SoftHSM(conf=conf, label=TOKEN_LABEL)


@dataclasses.dataclass
class CASetup:
    """A CA with certificates in every state, and a responder key on the token."""

    ca: OpenSSLCA
    certs: dict[str, Path]
    key_uri: str
    responder_cert: Path | None

    def serial(self, name: str) -> int:
        return self.ca.serial_of(self.certs[name])


REVOCATIONS: dict[str, tuple[str, ...]] = {
    "revoked": (),
    "keycompromise": ("-crl_reason", "keyCompromise"),
    "superseded": ("-crl_reason", "superseded"),
    "hold": ("-crl_hold", "holdInstructionReject"),
    "keytime": ("-crl_compromise", "20260101120000Z"),
    "cakeytime": ("-crl_CA_compromise", "20251231000000Z"),
}


def build_ca(
    directory: Path,
    softhsm: SoftHSM,
    *,
    name: str = "Test Root CA",
    algorithm: str = "ec-p256",
    delegated: bool = True,
) -> CASetup:
    ca = OpenSSLCA(directory, name)
    certs = {"good": ca.issue("good")}
    for cert_name, options in REVOCATIONS.items():
        certs[cert_name] = ca.issue(cert_name)
        ca.revoke(certs[cert_name], *options)
    certs["expired"] = ca.issue("expired", start="20200101000000Z", end="20200201000000Z")
    ca.updatedb()
    if delegated:
        key_uri, public_key = softhsm.make_key(algorithm)
        responder = ca.sign_responder(public_key)
    else:
        key_uri = softhsm.import_key(ca.key_pem, f"ca-{directory.name}-{next(_labels)}")
        responder = None
    return CASetup(ca=ca, certs=certs, key_uri=key_uri, responder_cert=responder)


def write_config(
    path: Path, setups: dict[str, CASetup], *, server: str = "", port: int = 0, **ca_extra: str
) -> Path:
    lines = ["[server]", f'listen = "127.0.0.1:{port or 8080}"', server, ""]
    lines += ["[token]", f'module = "{MODULE}"', ""]
    for name, setup in setups.items():
        lines += [
            "[[ca]]",
            f'name = "{name}"',
            f'certificate = "{setup.ca.cert_path}"',
            f'index = "{setup.ca.index}"',
            f'key = "{setup.key_uri}"',
        ]
        if setup.responder_cert is not None:
            lines.append(f'responder_certificate = "{setup.responder_cert}"')
        lines += [f"{k} = {v}" for k, v in ca_extra.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def ca_setup(tmp_path: Path, softhsm: SoftHSM) -> CASetup:
    return build_ca(tmp_path / "ca", softhsm)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM; SIGKILL if it has not ended after ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole process group: no worker outlives a test."""
        stop_process(self.process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_server(
    config: Path,
    port: int,
    log: Path,
    timeout: float = 30,
    *,
    max_fds: int | None = None,
    ready: bool = True,
) -> RunningServer:
    """``hsm-ocsp serve`` as a real process, waited on until /readyz says 200
    (``ready=False``: until /healthz does).

    ``max_fds`` sets its descriptor limit (``ulimit -n``).
    """

    def limit_fds() -> None:
        if max_fds is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every worker
            preexec_fn=limit_fds,
        )
    server = RunningServer(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}: {log.read_text()}")
        try:
            path = "readyz" if ready else "healthz"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"server not ready in {timeout} s: {log.read_text()}")


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start real servers; each is stopped (by PID) at the end of the test."""
    started: list[RunningServer] = []

    def _serve(config: Path, port: int, log: Path) -> RunningServer:
        server = start_server(config, port, log)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()
