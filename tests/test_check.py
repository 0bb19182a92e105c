"""``hsm-ocsp check``: each fault found in a configuration made to have it."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
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
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from hsm_ocsp.cli.main import main
from hsm_ocsp.core.pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri
from hsm_ocsp.pkcs11.keys import public_key_from_token

from .support.ca import CASetup, build_ca, write_config
from .support.softhsm import PIN, SoftHSM

_count = iter(range(10**6))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHSM) -> CASetup:
    """One CA with a good delegated responder; each test swaps in a faulty part."""
    return build_ca(tmp_path_factory.mktemp("check") / "ca", softhsm)


def _responder(
    setup: CASetup,
    public_key: Any,
    *,
    not_before: dt.timedelta = dt.timedelta(minutes=-5),
    not_after: dt.timedelta = dt.timedelta(days=365),
    eku: bool = True,
    nocheck: bool = True,
    issuer_key: Any = None,
) -> Path:
    now = dt.datetime.now(dt.UTC)
    ca = setup.ca
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "check responder")]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    if nocheck:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    cert = builder.sign(issuer_key or ca.key, hashes.SHA256())
    path = ca.dir / f"responder-{os.getpid()}-{next(_count)}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _check(
    tmp_path: Path, setup: CASetup, capsys: pytest.CaptureFixture[str], **changes: Any
) -> tuple[int, list[str]]:
    config = write_config(tmp_path / "config.toml", {"root": dataclasses.replace(setup, **changes)})
    code = main(["check", "--config", str(config)])
    out, err = capsys.readouterr()
    assert PIN not in out + err
    assert err == ""
    return code, out.splitlines()


def _lines(lines: list[str], level: str) -> list[str]:
    return [line for line in lines if line.startswith(level + " ")]


def test_check_a_sound_configuration_is_all_ok(
    tmp_path: Path, setup: CASetup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _check(tmp_path, setup, capsys)
    assert code == 0
    assert lines[-1] == "0 error(s), 0 warning(s)"
    ok = "\n".join(_lines(lines, "ok"))
    expected = ["found", "matches responder certificate", "sensitive and not extractable"]
    expected += ["issued by the CA", "EKU OCSPSigning", "nocheck", "valid until", "parses"]
    expected += ["critical digitalSignature", "not a CA", "authority key identifier"]
    expected += ["within the BR's 8 h to 10 days", "the token allows no limit sessions"]
    for part in expected:
        assert part in ok
    assert len(lines) == len(expected) + 1


def test_check_warns_when_key_names_another_key_than_the_certificates(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    """key= names a key that is not the certificate's, which is on the token too: the
    certificate's own key signs (found by its public key), and check says so."""
    other_uri, _ = softhsm.make_key("ec-p256")
    code, lines = _check(tmp_path, setup, capsys, key_uri=other_uri)
    assert code == 0
    (warning,) = _lines(lines, "warning")
    assert f"key {other_uri} is not the key of {setup.responder_cert}" in warning
    assert "point key= at it" in warning
    assert any("matches responder certificate" in line for line in _lines(lines, "ok"))


def test_check_finds_a_certificate_whose_key_is_not_on_the_token(
    tmp_path: Path, setup: CASetup, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = _responder(setup, ec.generate_private_key(ec.SECP256R1()).public_key())
    code, lines = _check(tmp_path, setup, capsys, responder_cert=stranger)
    assert code == 1
    (error,) = _lines(lines, "error")
    assert "no such private key" in error and str(stranger) in error


def test_check_finds_a_key_type_the_certificate_does_not_have(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    rsa_uri, _ = softhsm.make_key("rsa-2048")
    label = parse_pkcs11_uri(rsa_uri).object
    with softhsm.session() as session:  # no public half: nothing says it is not the key
        for public in list(
            session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label})
        ):
            public.destroy()
    code, lines = _check(tmp_path, setup, capsys, key_uri=rsa_uri)
    assert code == 1
    assert any("cannot sign" in line for line in _lines(lines, "error"))


def test_check_finds_a_missing_key_and_a_key_uri_that_misses(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    """key= names no key at all: an error if the certificate's key is not on the
    token either, a warning (that key signs) if it is."""
    missing = str(Pkcs11Uri(token=softhsm.label, object="no-such-key"))
    stranger = _responder(setup, ec.generate_private_key(ec.SECP256R1()).public_key())
    code, lines = _check(tmp_path, setup, capsys, key_uri=missing, responder_cert=stranger)
    assert code == 1
    assert any("no such private key" in line for line in _lines(lines, "error"))
    code, lines = _check(tmp_path, setup, capsys, key_uri=missing)
    assert code == 0
    assert any("point key= at it" in line for line in _lines(lines, "warning"))


def test_check_finds_a_responder_not_issued_by_the_ca(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, public_key = softhsm.make_key("ec-p256")
    stranger = ec.generate_private_key(ec.SECP256R1())
    cert = _responder(setup, public_key, issuer_key=stranger)
    code, lines = _check(tmp_path, setup, capsys, key_uri=uri, responder_cert=cert)
    assert code == 1
    assert [line for line in _lines(lines, "error") if "is not issued by" in line]


def test_check_finds_a_responder_without_ocsp_signing_eku(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, public_key = softhsm.make_key("ec-p256")
    cert = _responder(setup, public_key, eku=False)
    code, lines = _check(tmp_path, setup, capsys, key_uri=uri, responder_cert=cert)
    assert code == 1
    assert [line for line in _lines(lines, "error") if "lacks EKU OCSPSigning" in line]


def test_check_finds_a_responder_without_nocheck(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, public_key = softhsm.make_key("ec-p256")
    cert = _responder(setup, public_key, nocheck=False)
    code, lines = _check(tmp_path, setup, capsys, key_uri=uri, responder_cert=cert)
    assert code == 1
    errors = _lines(lines, "error")
    assert len(errors) == 1 and "lacks id-pkix-ocsp-nocheck" in errors[0]


def test_check_finds_an_expired_responder(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, public_key = softhsm.make_key("ec-p256")
    cert = _responder(
        setup, public_key, not_before=dt.timedelta(days=-30), not_after=dt.timedelta(days=-1)
    )
    code, lines = _check(tmp_path, setup, capsys, key_uri=uri, responder_cert=cert)
    assert code == 1
    errors = _lines(lines, "error")
    assert len(errors) == 1 and "expired" in errors[0]


def test_check_warns_of_a_responder_expiring_within_30_days(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, public_key = softhsm.make_key("ec-p256")
    cert = _responder(setup, public_key, not_after=dt.timedelta(days=10, hours=1))
    code, lines = _check(tmp_path, setup, capsys, key_uri=uri, responder_cert=cert)
    assert code == 0
    warnings = _lines(lines, "warning")
    assert len(warnings) == 1 and "expires in 10 days" in warnings[0]
    assert lines[-1] == "0 error(s), 1 warning(s)"


def test_check_warns_of_an_extractable_not_sensitive_key(
    tmp_path: Path, setup: CASetup, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    label = f"weak-{os.getpid()}"
    with softhsm.session() as session:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        public, private = params.generate_keypair(
            store=True,
            label=label,
            public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SIGN: True,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
            },
        )
        assert private[Attribute.EXTRACTABLE] is True
        public_key = public_key_from_token(public)
    cert = _responder(setup, public_key)
    uri = str(Pkcs11Uri(token=softhsm.label, object=label))
    code, lines = _check(tmp_path, setup, capsys, key_uri=uri, responder_cert=cert)
    assert code == 0
    warnings = _lines(lines, "warning")
    assert len(warnings) == 2
    assert "is extractable" in warnings[0] and "is not sensitive" in warnings[1]


def test_check_finds_a_broken_index(
    tmp_path: Path, setup: CASetup, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "index.txt"
    broken.write_bytes(setup.ca.index.read_bytes() + b"V\t301231000000Z\t\tZZ\tunknown\n")
    ca = copy.copy(setup.ca)
    ca.index = broken
    code, lines = _check(tmp_path, setup, capsys, ca=ca)
    assert code == 1
    errors = _lines(lines, "error")
    assert len(errors) == 1 and f"index {broken}:" in errors[0]


def test_check_wrong_pin_is_an_error_that_does_not_show_it(
    tmp_path: Path,
    setup: CASetup,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HSM_OCSP_PIN", "55554444")
    code, lines = _check(tmp_path, setup, capsys)
    assert code == 1
    assert any("PIN is incorrect" in line for line in _lines(lines, "error"))
    assert "55554444" not in "\n".join(lines)


def test_check_as_a_process(tmp_path: Path, setup: CASetup) -> None:
    config = write_config(tmp_path / "config.toml", {"root": setup})
    done = subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert PIN not in done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "0 error(s), 0 warning(s)"


@pytest.mark.parametrize("include", ["", "include_ca_certificate = false"])
def test_check_says_what_a_ca_signing_with_its_own_key_means_for_eap_tls_and_go(
    tmp_path: Path, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], include: str
) -> None:
    own = build_ca(tmp_path / "ca", softhsm, delegated=False)
    config = write_config(tmp_path / "config.toml", {"root": own})
    config.write_text(config.read_text() + include + "\n")
    code = main(["check", "--config", str(config)])
    out, _ = capsys.readouterr()
    (line,) = [x for x in out.splitlines() if "FreeRADIUS (EAP-TLS)" in x]
    assert "a delegated responder certificate (responder_certificate) suits every client" in line
    if include:
        assert "answers carry no certificate" in line and "refuse them" in line
    else:  # a root, and auto: its certificate is in its answers, which Go accepts
        assert "carry the CA's own certificate" in line and "Go's x/crypto/ocsp accepts" in line
    assert code == 0, out
