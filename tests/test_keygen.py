"""``hsm-ocsp keygen``: a sensitive, non-extractable key pair; never a replaced one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, ObjectClass

from hsm_ocsp.cli.main import main
from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
from hsm_ocsp.core.signing import scheme_for_public_key, verify
from hsm_ocsp.pkcs11.keys import public_key_from_token
from hsm_ocsp.pkcs11.private_key import session_signer

from .support.softhsm import MODULE, PIN, SoftHSM

_count = iter(range(10**6))


def _label(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_count)}"


def _keygen(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keygen", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _objects(softhsm: SoftHSM, label: str) -> list[tuple[ObjectClass, bytes]]:
    with softhsm.session() as session:
        return sorted(
            (obj.object_class, obj[Attribute.ID])
            for obj in session.get_objects({Attribute.LABEL: label})
        )


def _signs(softhsm: SoftHSM, label: str, public_pem: str) -> None:
    public_key = serialization.load_pem_public_key(public_pem.encode())
    scheme = scheme_for_public_key(public_key)
    with softhsm.session() as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        signature = session_signer(private, scheme)(b"still mine")
    verify(public_key, scheme, b"still mine", signature)


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519"])
def test_keygen_private_key_is_token_private_sensitive_not_extractable(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], algorithm: str
) -> None:
    label = _label(algorithm)
    uri = f"pkcs11:token={softhsm.label};object={label}"
    code, out, err = _keygen(capsys, "--module", MODULE, "--key", uri, "--algorithm", algorithm)
    assert code == 0, err
    pem, printed_uri = out.split("-----END PUBLIC KEY-----\n")
    printed = parse_pkcs11_uri(printed_uri.strip())
    assert printed.token == softhsm.label and printed.object == label
    assert printed.id is not None and len(printed.id) == 8  # made, since the URI had none
    with softhsm.session() as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.PRIVATE] is True
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.ID] == printed.id == public[Attribute.ID]
        token_public = public_key_from_token(public)
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert token_public.public_bytes(*spki).decode() == pem + "-----END PUBLIC KEY-----\n"
    _signs(softhsm, label, pem + "-----END PUBLIC KEY-----\n")


def test_keygen_takes_the_id_from_the_uri(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    label = _label("withid")
    uri = f"pkcs11:token={softhsm.label};object={label};id=%C0%FF%EE%{os.getpid() % 256:02X}"
    code, out, _ = _keygen(capsys, "--module", MODULE, "--key", uri)
    assert code == 0
    key_id = bytes([0xC0, 0xFF, 0xEE, os.getpid() % 256])
    assert parse_pkcs11_uri(out.splitlines()[-1]).id == key_id
    assert _objects(softhsm, label) == [
        (ObjectClass.PUBLIC_KEY, key_id),
        (ObjectClass.PRIVATE_KEY, key_id),
    ]


def test_keygen_refuses_a_label_in_use_and_leaves_the_first_key_signing(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    label = _label("taken")
    uri = f"pkcs11:token={softhsm.label};object={label}"
    code, first, _ = _keygen(capsys, "--module", MODULE, "--key", uri)
    assert code == 0
    before = _objects(softhsm, label)
    code, out, err = _keygen(capsys, "--module", MODULE, "--key", uri, "--algorithm", "rsa-2048")
    assert code == 1
    assert out == ""
    assert "already holds" in err and label in err and "never replaces" in err
    assert _objects(softhsm, label) == before
    _signs(softhsm, label, first.split("pkcs11:")[0])


def test_keygen_refuses_an_id_in_use(softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]) -> None:
    first_label = _label("id-owner")
    code, out, _ = _keygen(
        capsys, "--module", MODULE, "--key", f"pkcs11:token={softhsm.label};object={first_label}"
    )
    assert code == 0
    first_uri = parse_pkcs11_uri(out.splitlines()[-1])
    assert first_uri.id is not None
    id_text = "".join(f"%{b:02X}" for b in first_uri.id)
    other = _label("id-thief")
    code, _, err = _keygen(
        capsys,
        "--module",
        MODULE,
        "--key",
        f"pkcs11:token={softhsm.label};object={other};id={id_text}",
    )
    assert code == 1
    assert f"id {first_uri.id.hex()}" in err
    assert _objects(softhsm, other) == []
    _signs(softhsm, first_label, out.split("pkcs11:")[0])


def test_keygen_module_and_pin_from_config(
    softhsm: SoftHSM,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HSM_OCSP_PIN")
    monkeypatch.setenv("KEYGEN_TEST_PIN", PIN)
    config = tmp_path / "config.toml"
    config.write_text(f'[token]\nmodule = "{MODULE}"\npin_env = "KEYGEN_TEST_PIN"\n')
    label = _label("fromconfig")
    code, _, err = _keygen(
        capsys, "--config", str(config), "--key", f"pkcs11:token={softhsm.label};object={label}"
    )
    assert code == 0, err
    assert len(_objects(softhsm, label)) == 2


def test_keygen_needs_module_or_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _keygen(capsys, "--key", "pkcs11:token=x;object=y")
    assert code == 2
    assert "--module" in err


def test_keygen_rejects_a_uri_that_is_not_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _keygen(capsys, "--module", MODULE, "--key", "token=x;object=y")
    assert code == 2
    assert "pkcs11:" in err


def test_keygen_wrong_pin_fails_without_showing_it(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HSM_OCSP_PIN", "98765432")
    label = _label("badpin")
    code, out, err = _keygen(
        capsys, "--module", MODULE, "--key", f"pkcs11:token={softhsm.label};object={label}"
    )
    assert code == 1
    assert "PIN is incorrect" in err
    assert "98765432" not in out + err and PIN not in out + err


def test_keygen_as_a_process(softhsm: SoftHSM) -> None:
    label = _label("process")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsm_ocsp",
            "keygen",
            "--module",
            MODULE,
            "--key",
            f"pkcs11:token={softhsm.label};object={label}",
            "--algorithm",
            "ed25519",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert PIN not in done.stdout + done.stderr
    assert done.stdout.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert parse_pkcs11_uri(done.stdout.splitlines()[-1]).object == label
    assert [c for c, _ in _objects(softhsm, label)] == [
        ObjectClass.PUBLIC_KEY,
        ObjectClass.PRIVATE_KEY,
    ]


def test_keygen_id_option_sets_a_two_byte_cka_id(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--id`` sets CKA_ID (YubiHSM 2 takes 2-byte ids); a bad one is one clear line."""
    label = _label("shortid")
    key_id = bytes([0x7E, os.getpid() % 256])
    uri = f"pkcs11:token={softhsm.label};object={label}"
    code, out, _ = _keygen(capsys, "--module", MODULE, "--key", uri, "--id", f"0x{key_id.hex()}")
    assert code == 0
    assert parse_pkcs11_uri(out.splitlines()[-1]).id == key_id
    assert _objects(softhsm, label) == [
        (ObjectClass.PUBLIC_KEY, key_id),
        (ObjectClass.PRIVATE_KEY, key_id),
    ]
    code, _, err = _keygen(capsys, "--module", MODULE, "--key", uri + "x", "--id", "zz")
    assert code == 2 and "--id" in err and "Traceback" not in err
