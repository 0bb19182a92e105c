"""``hsm-ocsp csr``: a PKCS#10 request signed on the token, all the way to a responder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsm_ocsp.cli.csr import parse_subject
from hsm_ocsp.cli.main import main
from hsm_ocsp.core.signing import scheme_for_public_key
from hsm_ocsp.pkcs11.private_key import token_private_key

from .support.ca import CASetup, build_ca, write_config
from .support.pki import run
from .support.server import free_port
from .support.softhsm import MODULE, PIN, SoftHSM

_count = iter(range(10**6))
_SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def _new_key(softhsm: SoftHSM, algorithm: str) -> tuple[str, Any]:
    label = f"csr-{algorithm}-{os.getpid()}-{next(_count)}"
    uri = f"pkcs11:token={softhsm.label};object={label}"
    assert main(["keygen", "--module", MODULE, "--key", uri, "--algorithm", algorithm]) == 0
    with softhsm.session() as session:
        from hsm_ocsp.pkcs11.keys import find_public_key, public_key_from_token

        public_key = public_key_from_token(find_public_key(session, label=label, key_id=None))
    return uri, public_key


def test_subject_rfc4514_and_openssl_forms_are_the_same_name() -> None:
    rfc = parse_subject("CN=ocsp.example.com,O=Example\\, Inc.,C=DE")
    openssl = parse_subject("/C=DE/O=Example, Inc./CN=ocsp.example.com")
    assert rfc == openssl
    assert rfc.rfc4514_string() == "CN=ocsp.example.com,O=Example\\, Inc.,C=DE"
    assert [a.oid for a in openssl] == [
        NameOID.COUNTRY_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.COMMON_NAME,
    ]


def test_subject_openssl_form_escapes_and_email() -> None:
    name = parse_subject("/O=a\\/b/CN=x+emailAddress=ops@example.com")
    assert name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "a/b"
    assert name.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == "ops@example.com"


@pytest.mark.parametrize("text", ["", "/", "CN", "/CN", "nonsense=x"])
def test_subject_that_is_not_a_name_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_subject(text)


def test_csr_bad_subject_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["csr", "--module", MODULE, "--key", "pkcs11:object=x", "--subject", "/CN"])
    assert code == 2
    assert "--subject" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("algorithm", "signature_hash", "openssl_name"),
    [
        ("ec-p256", hashes.SHA256, "ecdsa-with-SHA256"),
        ("ec-p384", hashes.SHA384, "ecdsa-with-SHA384"),
        ("rsa-2048", hashes.SHA256, "sha256WithRSAEncryption"),
        ("rsa-3072", hashes.SHA256, "sha256WithRSAEncryption"),
        ("ed25519", None, "ED25519"),
    ],
)
def test_csr_signed_by_token_key_verifies_with_openssl(
    softhsm: SoftHSM,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    algorithm: str,
    signature_hash: type[hashes.HashAlgorithm] | None,
    openssl_name: str,
) -> None:
    uri, public_key = _new_key(softhsm, algorithm)
    out = tmp_path / "req.pem"
    subject = "/O=Example/CN=ocsp.example.com"
    assert (
        main(["csr", "--module", MODULE, "--key", uri, "--subject", subject, "--out", str(out)])
        == 0
    )
    assert PIN not in "".join(capsys.readouterr())
    verified = subprocess.run(
        ["openssl", "req", "-in", str(out), "-verify", "-noout", "-text"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert "verify OK" in verified.stderr + verified.stdout
    assert f"Signature Algorithm: {openssl_name}" in verified.stdout
    csr = x509.load_pem_x509_csr(out.read_bytes())
    assert csr.is_signature_valid
    assert csr.public_key().public_bytes(*_SPKI) == public_key.public_bytes(*_SPKI)
    assert csr.subject.rfc4514_string() == "CN=ocsp.example.com,O=Example"
    if signature_hash is None:
        assert csr.signature_hash_algorithm is None
    else:
        assert isinstance(csr.signature_hash_algorithm, signature_hash)


def test_csr_goes_to_stdout_without_out(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, _ = _new_key(softhsm, "ec-p256")
    capsys.readouterr()
    assert main(["csr", "--module", MODULE, "--key", uri, "--subject", "CN=stdout"]) == 0
    out = capsys.readouterr().out
    assert x509.load_pem_x509_csr(out.encode()).is_signature_valid


def test_csr_for_a_missing_key_fails(softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"pkcs11:token={softhsm.label};object=no-such-key-{os.getpid()}"
    assert main(["csr", "--module", MODULE, "--key", uri, "--subject", "CN=x"]) == 1
    assert "no such private key" in capsys.readouterr().err


def test_token_key_refuses_another_hash_and_export() -> None:
    software = ec.generate_private_key(ec.SECP256R1())
    scheme = scheme_for_public_key(software.public_key())
    key = token_private_key(
        software.public_key(), scheme, lambda m: software.sign(m, ec.ECDSA(hashes.SHA256()))
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(parse_subject("CN=x"))
    assert builder.sign(key, hashes.SHA256()).is_signature_valid
    with pytest.raises(ValueError, match="sha256"):
        builder.sign(key, hashes.SHA384())
    with pytest.raises(TypeError):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048", "ed25519"])
def test_keygen_csr_ca_serve_answers_verified_by_openssl(
    softhsm: SoftHSM, tmp_path: Path, serve: Any, algorithm: str
) -> None:
    """The operator's path: keygen -> csr -> the CA signs -> serve -> openssl ocsp."""
    setup = build_ca(tmp_path / "ca", softhsm, delegated=False)
    ca = setup.ca
    uri, _ = _new_key(softhsm, algorithm)
    request = tmp_path / "responder.csr"
    subject = "/O=hsm-ocsp tests/CN=OCSP via csr"
    argv = ["csr", "--module", MODULE, "--key", uri, "--subject", subject, "--out", str(request)]
    assert main(argv) == 0
    run("openssl", "req", "-in", request, "-verify", "-noout")
    responder = tmp_path / "responder.pem"
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca.cert_path,
        "-CAkey",
        ca.dir / "ca.key",
        "-set_serial",
        "0x7E57",
        "-days",
        "30",
        "-extfile",
        ca.cnf,
        "-extensions",
        "ocsp",
        "-out",
        responder,
    )
    cert = x509.load_pem_x509_certificate(responder.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    delegated = CASetup(ca=ca, certs=setup.certs, key_uri=uri, responder_cert=responder)
    port = free_port()
    config = write_config(tmp_path / "config.toml", {"root": delegated}, port=port)
    server = serve(config, port, tmp_path / "server.log")
    for name, status in (("good", "good"), ("revoked", "revoked")):
        done = subprocess.run(
            [
                "openssl",
                "ocsp",
                "-issuer",
                str(ca.cert_path),
                "-cert",
                str(setup.certs[name]),
                "-url",
                server.url,
                "-CAfile",
                str(ca.cert_path),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert "Response verify OK" in done.stderr, done.stderr + done.stdout
        assert f"{setup.certs[name]}: {status}" in done.stdout


def test_csr_as_a_process(softhsm: SoftHSM, tmp_path: Path) -> None:
    uri, _ = _new_key(softhsm, "ec-p384")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsm_ocsp",
            "csr",
            "--module",
            MODULE,
            "--key",
            uri,
            "--subject",
            "CN=process.example",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert PIN not in done.stdout + done.stderr
    csr = x509.load_pem_x509_csr(done.stdout.encode())
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA384)
