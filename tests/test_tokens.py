"""How the responder finds and uses a token: RFC 7512 token attributes, one login a token,
and the key template keygen asks for (issue 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest

from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
from hsm_ocsp.pkcs11.keys import open_session, select_token

from .support.ca import build_ca, write_config
from .support.server import free_port, start_server
from .support.softhsm import MODULE, SoftHSM
from .support.tokens import (
    TokenUnderTest,
    opencryptoki,
    opencryptoki_available,
    operator_path,
    tpm2,
    tpm2_available,
)

SPY = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so"
# OpenCryptoki's soft token and its slot daemon are one per machine, and refuse work
# (CKR_HOST_MEMORY) with other tests running beside them: make test runs these alone,
# after the rest.
pytestmark = pytest.mark.machine_tokens


def _token_info(softhsm: SoftHSM) -> tuple[str, str, str]:
    token = pkcs11.lib(MODULE).get_token(token_label=softhsm.label)
    return token.serial.decode().strip(), token.manufacturer_id.strip(), token.model.strip()


def test_serial_manufacturer_and_model_in_a_uri_select_the_token(softhsm: SoftHSM) -> None:
    serial, manufacturer, model = _token_info(softhsm)
    lib = pkcs11.lib(MODULE)
    for text in (
        f"pkcs11:serial={serial};object=x",
        f"pkcs11:token={softhsm.label};serial={serial};object=x",
        f"pkcs11:manufacturer={manufacturer.replace(' ', '%20')};token={softhsm.label};object=x",
        f"pkcs11:model={model.replace(' ', '%20')};token={softhsm.label};object=x",
    ):
        assert select_token(lib, parse_pkcs11_uri(text)).label == softhsm.label, text
    for text in (
        f"pkcs11:token={softhsm.label};serial=0000000000000000;object=x",
        f"pkcs11:token={softhsm.label};model=Luna;object=x",
    ):
        with pytest.raises(pkcs11.exceptions.NoSuchToken):
            select_token(lib, parse_pkcs11_uri(text))
    with open_session(MODULE, softhsm.pin, parse_pkcs11_uri(f"pkcs11:serial={serial};object=x")):
        pass


def test_two_cas_with_keys_on_one_token_named_two_ways_serve_with_one_login(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One CA's URI names the token by label, the other's by serial: one session, one login."""
    serial, _, _ = _token_info(softhsm)
    first = build_ca(tmp_path / "a", softhsm)
    second = build_ca(tmp_path / "b", softhsm, name="Second CA")
    second.key_uri = second.key_uri.replace(f"token={softhsm.label}", f"serial={serial}")
    port = free_port()
    config = write_config(tmp_path / "config.toml", {"a": first, "b": second}, port=port)
    config.write_text(config.read_text().replace(f'module = "{MODULE}"', f'module = "{SPY}"'))
    spy_log = tmp_path / "spy.log"
    monkeypatch.setenv("PKCS11SPY", MODULE)
    monkeypatch.setenv("PKCS11SPY_OUTPUT", str(spy_log))
    server = start_server(config, port, tmp_path / "server.log")
    server.stop()
    assert spy_log.read_text().count(": C_Login\n") == 1
    assert "UserAlreadyLoggedIn" not in server.log.read_text()


def _keygen(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", "keygen", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048", "ed25519"])
def test_keygen_asks_only_for_what_a_signing_key_needs(
    tmp_path: Path, softhsm: SoftHSM, algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template sent in C_GenerateKeyPair (seen by OpenSC's pkcs11-spy): sign, verify,
    token, private, sensitive, not extractable; no decrypt, unwrap, derive, encrypt or wrap."""
    spy_log = tmp_path / "spy.log"
    env = {**os.environ, "PKCS11SPY": MODULE, "PKCS11SPY_OUTPUT": str(spy_log)}
    label = f"tmpl-{algorithm}-{tmp_path.name}"[:60]
    done = _keygen(
        [
            "--module",
            SPY,
            "--key",
            f"pkcs11:token={softhsm.label};object={label}",
            "--algorithm",
            algorithm,
        ],
        env,
    )
    assert done.returncode == 0, done.stderr
    call = spy_log.read_text().split(": C_GenerateKeyPair\n", 1)[1].split("\nReturned:", 1)[0]
    public, private = call.split("pPrivateKeyTemplate", 1)
    for attribute in ("CKA_DECRYPT", "CKA_UNWRAP", "CKA_DERIVE", "CKA_ENCRYPT", "CKA_WRAP"):
        assert attribute not in call, (attribute, call)
    for attribute in ("CKA_SIGN", "CKA_SENSITIVE", "CKA_PRIVATE", "CKA_TOKEN", "CKA_EXTRACTABLE"):
        assert re.search(rf"{attribute}\b", private), (attribute, private)
    for attribute in ("CKA_VERIFY", "CKA_TOKEN"):
        assert re.search(rf"{attribute}\b", public), (attribute, public)


# --- the operator's path on each token -----------------------------------------


@pytest.fixture(scope="module")
def ock() -> Iterator[TokenUnderTest]:
    if not opencryptoki_available():
        if os.environ.get("CI"):
            pytest.fail("OpenCryptoki is not installed: apt-get install opencryptoki")
        pytest.skip("OpenCryptoki (Debian opencryptoki) is not installed")
    yield from opencryptoki()


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenUnderTest]:
    if not tpm2_available():
        if os.environ.get("CI"):
            pytest.fail("tpm2-pkcs11 on swtpm is not installed (see the Makefile's packages)")
        pytest.skip("tpm2-pkcs11, swtpm or tpm2-abrmd is not installed")
    yield from tpm2(tmp_path_factory.mktemp("tpm2"))


def _softhsm_under_test(softhsm: SoftHSM) -> TokenUnderTest:
    return TokenUnderTest(
        "SoftHSM",
        MODULE,
        softhsm.label,
        softhsm.pin,
        ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519"),
    )


@pytest.mark.parametrize("algorithm", ["rsa-2048", "ec-p384"])
def test_operator_path_on_softhsm(softhsm: SoftHSM, tmp_path: Path, algorithm: str) -> None:
    operator_path(_softhsm_under_test(softhsm), algorithm, tmp_path)


@pytest.mark.parametrize("algorithm", ["rsa-2048", "rsa-3072"])
def test_operator_path_on_opencryptoki(ock: TokenUnderTest, tmp_path: Path, algorithm: str) -> None:
    operator_path(ock, algorithm, tmp_path)


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "rsa-2048"])
def test_operator_path_on_tpm2_pkcs11(tpm: TokenUnderTest, tmp_path: Path, algorithm: str) -> None:
    """EC keygen failed here with GeneralError while the template asked for decrypt."""
    operator_path(tpm, algorithm, tmp_path)


@pytest.mark.parametrize("algorithm", ["ec-p256", "ed25519"])
def test_keygen_a_token_refuses_is_one_clear_line(
    ock: TokenUnderTest, tmp_path: Path, algorithm: str
) -> None:
    env = {**os.environ, "HSM_OCSP_PIN": ock.pin}
    done = _keygen(
        [
            "--module",
            ock.module,
            "--key",
            f"pkcs11:token={ock.label};object=no-{algorithm}",
            "--algorithm",
            algorithm,
        ],
        env,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "CKR_MECHANISM_INVALID" in lines[0] and "use --algorithm rsa-2048" in lines[0]
    assert ock.label in lines[0] and ock.pin not in done.stderr


def test_check_names_always_authenticate_as_the_reason(
    tmp_path: Path, softhsm: SoftHSM, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key that wants a context-specific login before each signature is refused by
    check with that reason, not blamed on the certificate."""
    from pkcs11 import Attribute, KeyType

    from hsm_ocsp.cli.main import main
    from hsm_ocsp.core.pkcs11_uri import Pkcs11Uri
    from hsm_ocsp.pkcs11.keys import public_key_from_token

    label = f"always-auth-{tmp_path.name}"[:60]
    with softhsm.session() as session:
        public, _ = session.generate_keypair(
            KeyType.RSA,
            2048,
            store=True,
            label=label,
            private_template={Attribute.ALWAYS_AUTHENTICATE: True, Attribute.SIGN: True},
        )
        public_key = public_key_from_token(public)
    setup = build_ca(tmp_path / "ca", softhsm)
    setup.key_uri = str(Pkcs11Uri(token=softhsm.label, object=label))
    setup.responder_cert = setup.ca.sign_responder(public_key)
    config = write_config(tmp_path / "config.toml", {"root": setup})
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("error"))
    assert "CKA_ALWAYS_AUTHENTICATE" in line and "certificate" not in line, out
