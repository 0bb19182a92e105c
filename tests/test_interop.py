"""Independent clients against a real ``hsm-ocsp serve`` process.

`openssl ocsp` and GnuTLS `ocsptool` verify signature, chain and status;
pkilint lints the responses against RFC 6960 and the BRs.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.ca import CASetup, build_ca, write_config
from .support.pki import OpenSSLCA
from .support.requests import build_request
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import SoftHSM


@pytest.fixture(scope="module", params=["index", "crl"])
def interop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHSM
) -> Iterator[tuple[CASetup, RunningServer, Path]]:
    """The CA served from its index, and again from its CRL (``openssl ca -gencrl``)."""
    directory = tmp_path_factory.mktemp("interop")
    setup = build_ca(directory / "ca", softhsm)
    port = free_port()
    crls = None
    if request.param == "crl":
        crls = {"root": setup.ca.gencrl(directory / "root.crl", "-crldays", "2")}
    config = write_config(directory / "hsm-ocsp.toml", {"root": setup}, port=port, crls=crls)
    server = start_server(config, port, directory / "server.log")
    yield setup, server, directory
    server.stop()


def openssl_ocsp(setup: CASetup, server: RunningServer, *args: str | Path) -> str:
    done = subprocess.run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(setup.ca.cert_path),
            "-url",
            server.url,
            "-CAfile",
            str(setup.ca.cert_path),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("good", "good", None),
        ("revoked", "revoked", None),
        ("keycompromise", "revoked", "keyCompromise"),
        ("superseded", "revoked", "superseded"),
        ("hold", "revoked", "certificateHold"),
        ("keytime", "revoked", "keyCompromise"),
        ("cakeytime", "revoked", "cACompromise"),
        ("expired", "good", None),
    ],
)
def test_openssl_ocsp_verifies_each_status(
    interop: tuple[CASetup, RunningServer, Path], name: str, status: str, reason: str | None
) -> None:
    setup, server, _ = interop
    out = openssl_ocsp(setup, server, "-cert", setup.certs[name])
    assert "Response verify OK" in out, out
    assert f"{setup.certs[name]}: {status}" in out, out
    assert "WARNING" not in out, out  # the nonce was echoed, times are sane
    if reason is not None:
        assert f"Reason: {reason}" in out, out
    else:
        assert "Reason:" not in out, out


def test_openssl_ocsp_unknown_serial(interop: tuple[CASetup, RunningServer, Path]) -> None:
    setup, server, _ = interop
    out = openssl_ocsp(setup, server, "-serial", "0xDEADBEEF")
    assert "Response verify OK" in out and "0xDEADBEEF: unknown" in out, out


def test_openssl_ocsp_sha256_cert_id(interop: tuple[CASetup, RunningServer, Path]) -> None:
    setup, server, _ = interop
    out = openssl_ocsp(
        setup, server, "-sha256", "-cert", setup.certs["keycompromise"], "-resp_text"
    )
    assert "Response verify OK" in out, out
    assert "Hash Algorithm: sha256" in out, out
    assert f"{setup.certs['keycompromise']}: revoked" in out, out


def test_openssl_ocsp_several_serials_in_one_request(
    interop: tuple[CASetup, RunningServer, Path],
) -> None:
    setup, server, _ = interop
    out = openssl_ocsp(
        setup,
        server,
        "-cert",
        setup.certs["good"],
        "-cert",
        setup.certs["hold"],
        "-serial",
        "0x7777",
    )
    assert "Response verify OK" in out, out
    assert f"{setup.certs['good']}: good" in out
    assert f"{setup.certs['hold']}: revoked" in out
    assert "0x7777: unknown" in out


def test_openssl_ocsp_nonce_is_echoed(interop: tuple[CASetup, RunningServer, Path]) -> None:
    setup, server, _ = interop
    out = openssl_ocsp(setup, server, "-nonce", "-cert", setup.certs["good"], "-resp_text")
    assert "Response verify OK" in out and "OCSP Nonce" in out, out
    assert "WARNING: no nonce" not in out


def test_get_response_verifies_with_openssl(
    interop: tuple[CASetup, RunningServer, Path],
) -> None:
    setup, server, directory = interop
    der = build_request([(setup.ca.certificate, setup.serial("keycompromise"))])
    url = server.url + urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    with urllib.request.urlopen(url, timeout=10) as resp:
        (directory / "get.der").write_bytes(resp.read())
    out = subprocess.run(
        [
            "openssl",
            "ocsp",
            "-respin",
            str(directory / "get.der"),
            "-CAfile",
            str(setup.ca.cert_path),
            "-issuer",
            str(setup.ca.cert_path),
            "-cert",
            str(setup.certs["keycompromise"]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Response verify OK" in out.stderr + out.stdout
    assert f"{setup.certs['keycompromise']}: revoked" in out.stdout


def test_unconfigured_ca_is_unauthorized(
    interop: tuple[CASetup, RunningServer, Path], tmp_path: Path
) -> None:
    _, server, _ = interop
    other = OpenSSLCA(tmp_path / "other", "Unserved CA")
    leaf = other.issue("stranger")
    out = subprocess.run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(other.cert_path),
            "-cert",
            str(leaf),
            "-url",
            server.url,
            "-CAfile",
            str(other.cert_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert "Responder Error: unauthorized (6)" in out.stdout + out.stderr


def test_garbage_gets_malformed_request_and_the_server_lives_on(
    interop: tuple[CASetup, RunningServer, Path],
) -> None:
    setup, server, _ = interop
    for body in (b"garbage", b"\x30\x82\xff\xff", b""):
        req = urllib.request.Request(server.url, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.read() == bytes.fromhex("30030a0101")
    out = openssl_ocsp(setup, server, "-cert", setup.certs["good"])
    assert "Response verify OK" in out and ": good" in out


@pytest.mark.parametrize(("name", "status"), [("good", "good"), ("keycompromise", "revoked")])
def test_gnutls_ocsptool_verifies(
    interop: tuple[CASetup, RunningServer, Path], name: str, status: str
) -> None:
    setup, server, _ = interop
    assert shutil.which("ocsptool"), "install gnutls-bin"
    done = subprocess.run(
        [
            "ocsptool",
            f"--ask={server.url}",
            "--load-issuer",
            str(setup.ca.cert_path),
            "--load-cert",
            str(setup.certs[name]),
            "--load-trust",
            str(setup.ca.cert_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    out = done.stdout + done.stderr
    assert "Verifying OCSP Response: Success." in out, out
    assert f"Certificate Status: {status}" in out, out


@pytest.mark.parametrize("name", ["good", "keycompromise", "unknown"])
def test_pkilint_finds_nothing_in_responses(
    interop: tuple[CASetup, RunningServer, Path], name: str
) -> None:
    setup, server, directory = interop
    # The venv's own console script: make test runs the venv's python without its bin/ on PATH.
    lint = Path(sys.executable).parent / "lint_ocsp_response"
    assert lint.is_file(), "pip install pkilint (the test extra)"
    serial = 0xABCDEF if name == "unknown" else setup.serial(name)
    req = urllib.request.Request(
        server.url,
        data=build_request([(setup.ca.certificate, serial)], algorithm="sha256"),
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        path = directory / f"{name}.der"
        path.write_bytes(resp.read())
    done = subprocess.run(
        [lint, "lint", "--document-format", "DER", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


@pytest.mark.parametrize("include", ['"auto"', "false"])
def test_answers_signed_with_the_cas_own_key_verify_with_openssl_and_gnutls(
    tmp_path: Path, softhsm: SoftHSM, include: str
) -> None:
    """A CA that signs with its own key, its certificate in its answers (the default for
    a root) or not: openssl accepts both forms; GnuTLS's ocsptool, like FreeRADIUS
    (tests/test_eap_tls.py), finds no signer in an answer without it."""
    setup = build_ca(tmp_path / "ca", softhsm, delegated=False)
    port = free_port()
    config = write_config(
        tmp_path / "hsm-ocsp.toml", {"root": setup}, port=port, include_ca_certificate=include
    )
    server = start_server(config, port, tmp_path / "server.log")
    try:
        for name, status in (("good", "good"), ("keycompromise", "revoked")):
            out = openssl_ocsp(setup, server, "-cert", setup.certs[name])
            assert "Response verify OK" in out and f": {status}" in out, out
            done = subprocess.run(
                [
                    "ocsptool",
                    f"--ask={server.url}",
                    "--load-issuer",
                    str(setup.ca.cert_path),
                    "--load-cert",
                    str(setup.certs[name]),
                    "--load-trust",
                    str(setup.ca.cert_path),
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            said = done.stdout + done.stderr
            assert f"Certificate Status: {status}" in said, said
            if include == "false":
                assert "Verifying OCSP Response: Failure, Signer cert not found." in said, said
            else:
                assert "Verifying OCSP Response: Success." in said, said
    finally:
        server.stop()
