"""PINs are opaque: the forms hardware vendors use (AWS CloudHSM's
``user:password``, YubiHSM 2's key id and password ``0001password``, spaces, ``%`` and
``:``) log in unchanged from the environment and from ``pin_file``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_ocsp.cli.softhsm_token import init_softhsm_token

from .support.pki import OpenSSLCA
from .support.softhsm import MODULE

PINS = ["crypto_user:Pa55word", "0001password", "a PIN with spaces", "100%:50% off"]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsm_ocsp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("pin", PINS)
def test_a_pin_in_a_vendor_form_logs_in_from_the_environment_and_from_a_file(
    tmp_path: Path, pin: str
) -> None:
    conf = tmp_path / "softhsm2.conf"
    init_softhsm_token(conf, label="pins", pin=pin, so_pin="12345678")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "HSM_OCSP_PIN": pin}
    key = "pkcs11:token=pins;object=responder"
    made = _cli(["keygen", "--module", MODULE, "--key", key, "--algorithm", "ec-p256"], env)
    assert made.returncode == 0, made.stderr
    ca = OpenSSLCA(tmp_path / "ca", "PIN CA")
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[token]\nmodule = "{MODULE}"\npin_file = "{pin_file}"\n\n'
        f'[[ca]]\nname = "root"\ncertificate = "{ca.cert_path}"\nindex = "{ca.index}"\n'
        f'key = "{key}"\n'
    )
    del env["HSM_OCSP_PIN"]
    request = _cli(["csr", "--config", str(config), "--key", key, "--subject", "CN=pins"], env)
    assert request.returncode == 0, request.stderr
    assert "BEGIN CERTIFICATE REQUEST" in request.stdout
    assert pin not in request.stdout + request.stderr + made.stdout + made.stderr
