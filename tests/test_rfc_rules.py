"""Rules of ../shared/RFC-CHECKLIST.md that had no test of their own: 11, 26, 28, 32.

Each test is named after its rule and fails if the rule breaks.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pytest_aiohttp import AiohttpClient

from hsm_ocsp.cli.check import check_config
from hsm_ocsp.config.file import load_config
from hsm_ocsp.core import der
from hsm_ocsp.core.responder_profile import Level, profile_findings
from hsm_ocsp.server.app import create_app

from .support.ca import CASetup, build_ca, write_config
from .support.pki import OpenSSLCA
from .support.softhsm import SoftHSM

TYPE = {"Content-Type": "application/ocsp-request"}

Client = TestClient[web.Request, web.Application]


async def _client(
    tmp_path: Path, setup: CASetup, aiohttp_client: AiohttpClient, **extra: str
) -> Client:
    config = write_config(tmp_path / "config.toml", {"root": setup}, **extra)  # type: ignore[arg-type]
    return await aiohttp_client(create_app(load_config(config)))


async def test_rule_11_requestor_name_and_request_signature_are_ignored(
    tmp_path: Path, softhsm: SoftHSM, aiohttp_client: AiohttpClient
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    client = await _client(tmp_path, setup, aiohttp_client)
    plain = setup.request("revoked")
    tbs = plain[2:] if plain[1] < 0x80 else plain[2 + (plain[1] & 0x7F) :]
    inner = tbs[2:] if tbs[1] < 0x80 else tbs[2 + (tbs[1] & 0x7F) :]  # the request list
    name = der.explicit(
        1,
        der.tlv(
            0xA4, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a requestor")]).public_bytes()
        ),
    )
    with_name = der.sequence(der.sequence(name, inner))
    signature = der.sequence(
        der.sequence(der.oid("1.2.840.10045.4.3.2")),
        der.bit_string(b"\x01" * 70),
        der.explicit(
            0, der.sequence(setup.ca.certificate.public_bytes(serialization.Encoding.DER))
        ),
    )
    signed = der.sequence(der.sequence(name, inner), der.explicit(0, signature))
    for body in (with_name, signed):
        response = ocsp.load_der_ocsp_response(
            await (await client.post("/", data=body, headers=TYPE)).read()
        )
        assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED


# BR 7.1.3.2: the AlgorithmIdentifier of each signature, byte for byte.
SIGNATURE_ALGORITHMS = {
    "rsa-2048": bytes.fromhex("300d06092a864886f70d01010b0500"),  # sha256WithRSA, NULL
    "ec-p256": bytes.fromhex("300a06082a8648ce3d040302"),  # ecdsa-with-SHA256, absent
    "ec-p384": bytes.fromhex("300a06082a8648ce3d040303"),  # ecdsa-with-SHA384, absent
}


@pytest.mark.parametrize("algorithm", list(SIGNATURE_ALGORITHMS))
async def test_rule_26_signature_algorithm_bytes(
    tmp_path: Path, softhsm: SoftHSM, aiohttp_client: AiohttpClient, algorithm: str
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm, algorithm=algorithm)
    client = await _client(tmp_path, setup, aiohttp_client)
    body = await (await client.post("/", data=setup.request("good"), headers=TYPE)).read()
    basic = asn1_ocsp.OCSPResponse.load(body)["response_bytes"]["response"].parsed
    assert basic["signature_algorithm"].dump() == SIGNATURE_ALGORITHMS[algorithm]


@pytest.mark.parametrize(
    ("validity", "warned"),
    [
        ("8h", False),
        ("28799s", False),
        ("28798s", True),
        ("7h", True),
        ("10d", True),
        ("863999s", False),
        ("1d", False),
    ],
)
def test_rule_28_check_warns_outside_the_br_validity_window(
    tmp_path: Path, softhsm: SoftHSM, validity: str, warned: bool
) -> None:
    """8 hours to 10 days, counted inclusively (+1 s): 28799 s counts as 8 h, 10 d as 10 d + 1 s
    (too long)."""
    setup = build_ca(tmp_path / "ca", softhsm)
    config = write_config(tmp_path / "config.toml", {"root": setup}, validity=f'"{validity}"')
    findings = check_config(load_config(config))
    window = [
        f for f in findings if "8 hours to 10 days" in f.message or "within the BR" in f.message
    ]
    assert len(window) == 1
    assert (window[0].level == "warning") is warned, window[0]
    if warned:
        assert "publicly trusted" in window[0].message


def test_rule_28_default_validity_is_in_the_window(tmp_path: Path, softhsm: SoftHSM) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    config = load_config(write_config(tmp_path / "config.toml", {"root": setup}))
    assert config.cas[0].validity == dt.timedelta(days=1)


def _responder(ca: OpenSSLCA, public_key: Any, **changes: Any) -> x509.Certificate:
    """A responder certificate with the BR profile, less or more what ``changes`` say."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "profile")]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    extensions: dict[str, tuple[Any, bool] | None] = {
        "bc": (x509.BasicConstraints(ca=False, path_length=None), True),
        "ku": (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
        "eku": (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False),
        "nocheck": (x509.OCSPNoCheck(), False),
        "aki": (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False),
    }
    extensions.update(changes)
    for value in extensions.values():
        if value is not None:
            builder = builder.add_extension(value[0], critical=value[1])
    return builder.sign(ca.key, hashes.SHA256())


def test_rule_32_responder_certificate_profile(tmp_path: Path, softhsm: SoftHSM) -> None:
    ca = OpenSSLCA(tmp_path / "ca")
    _, public_key = softhsm.make_key("ec-p256")

    def levels(cert: x509.Certificate) -> dict[str, Level]:
        return {f.message: f.level for f in profile_findings(cert, ca.certificate)}

    sound = levels(_responder(ca, public_key))
    assert set(sound.values()) == {Level.OK} and len(sound) == 6
    cases: dict[str, dict[str, Any]] = {
        "EKUs besides OCSPSigning": dict(
            eku=(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.OCSP_SIGNING, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                False,
            )
        ),
        "nocheck critical": dict(nocheck=(x509.OCSPNoCheck(), True)),
        "keyUsage is not critical": dict(
            ku=(x509.KeyUsage(True, False, False, False, False, False, False, False, False), False)
        ),
        "lacks digitalSignature": dict(
            ku=(x509.KeyUsage(False, True, False, False, False, False, False, False, False), True)
        ),
        "is a CA certificate": dict(bc=(x509.BasicConstraints(ca=True, path_length=None), True)),
        "no authority key identifier": dict(aki=None),
        "lacks EKU OCSPSigning": dict(eku=None),
        "lacks id-pkix-ocsp-nocheck": dict(nocheck=None),
    }
    for expected, change in cases.items():
        found = [
            m
            for m, level in levels(_responder(ca, public_key, **change)).items()
            if level is not Level.OK
        ]
        assert len(found) == 1 and expected in found[0], (expected, found)


@pytest.mark.parametrize("fault", ["no-eku", "other-issuer"])
def test_rule_32_serve_refuses_a_responder_certificate_that_cannot_be_validated(
    tmp_path: Path, softhsm: SoftHSM, fault: str
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    cert = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())  # type: ignore[union-attr]
    other = OpenSSLCA(tmp_path / "other", "Other CA")
    bad = (
        _responder(setup.ca, cert.public_key(), eku=None)
        if fault == "no-eku"
        else (_responder(other, cert.public_key()))
    )
    setup.responder_cert = tmp_path / "bad.pem"
    setup.responder_cert.write_bytes(bad.public_bytes(serialization.Encoding.PEM))
    config = write_config(tmp_path / "config.toml", {"root": setup})
    done = subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and "ca[0].responder_certificate" in lines[0]
    assert ("lacks EKU OCSPSigning" if fault == "no-eku" else "not issued by the CA") in lines[0]


@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [("ed25519", {}), ("rsa-2048", {"rsa_padding": '"pss"'}), ("ec-p256", {})],
)
def test_check_notes_which_validators_cannot_verify_the_signature_algorithm(
    tmp_path: Path, softhsm: SoftHSM, algorithm: str, extra: dict[str, str]
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm, algorithm=algorithm)
    config = write_config(tmp_path / "config.toml", {"root": setup}, **extra)  # type: ignore[arg-type]
    notes = [f for f in check_config(load_config(config)) if f.level == "note"]
    if algorithm == "ec-p256":
        assert notes == []
        return
    assert len(notes) == 1 and "x/crypto/ocsp" in notes[0].message
    assert ("NSS before 3.99" in notes[0].message) is (algorithm == "ed25519")
