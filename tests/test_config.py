"""Configuration: checked at start, every error names the key and the file."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import pytest
from cryptography import x509

from hsm_ocsp.cli.main import main
from hsm_ocsp.config.file import load_config
from hsm_ocsp.config.model import TokenConfig
from hsm_ocsp.config.pin import read_pin
from hsm_ocsp.config.section import parse_duration
from hsm_ocsp.core.errors import ConfigError

from .support.ca import build_ca, write_config
from .support.pki import OpenSSLCA
from .support.softhsm import SoftHSM


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLCA:
    return OpenSSLCA(tmp_path_factory.mktemp("configca"))


def write(tmp_path: Path, ca: OpenSSLCA, ca_extra: str = "", top: str = "") -> Path:
    path = tmp_path / "hsm-ocsp.toml"
    key = 'key = "pkcs11:token=ocsp;object=responder"'
    if ca_extra.startswith("key ="):
        key, ca_extra = ca_extra, ""
    path.write_text(
        f"""{top}
[server]
listen = "127.0.0.1:8080"

[[ca]]
name = "root"
certificate = "{ca.cert_path}"
index = "{ca.index}"
{key}
{ca_extra}
"""
    )
    return path


def test_the_design_example_loads(tmp_path: Path, ca: OpenSSLCA) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_path.read_bytes())
    (tmp_path / "index.txt").write_text("")
    (tmp_path / "ocsp.pem").write_bytes(ca.cert_path.read_bytes())
    path = tmp_path / "c.toml"
    path.write_text(
        """
[server]
listen = "127.0.0.1:8080"
workers = 2
metrics_listen = "127.0.0.1:9102"

[token]
module = "/usr/lib/softhsm/libsofthsm2.so"
pin_env = "HSM_OCSP_PIN"

[[ca]]
name = "root"
certificate = "ca.pem"
index = "index.txt"
responder_certificate = "ocsp.pem"
key = "pkcs11:token=ocsp;object=responder"
validity = "1h"
"""
    )
    config = load_config(path)
    assert config.server.workers == 2
    assert config.server.metrics_listen == ("127.0.0.1", 9102)
    (root,) = config.cas
    assert root.index == tmp_path / "index.txt"  # relative to the config file
    assert root.validity == dt.timedelta(hours=1)
    assert root.key.token == "ocsp" and root.key.object == "responder"
    assert root.responder_certificate is not None


@pytest.mark.parametrize(
    ("ca_extra", "top", "key", "words"),
    [
        ("colour = 'blue'", "", "ca[0].colour", "unknown key"),
        ('validity = "an hour"', "", "ca[0].validity", "not a duration"),
        ('validity = "0s"', "", "ca[0].validity", "longer than zero"),
        (
            'responder_certificate = "missing.pem"',
            "",
            "ca[0].responder_certificate",
            "does not exist",
        ),
        ('key = "file:///key.pem"', "", "ca[0].key", "pkcs11:"),
        ('key = "pkcs11:token=x;object=y;pin-value=1234"', "", "ca[0].key", "must not carry a PIN"),
        ('rsa_padding = "oaep"', "", "ca[0].rsa_padding", "one of"),
        ("", '[token]\nmodul = "x"', "token.modul", "unknown key"),
    ],
)
def test_a_bad_value_names_the_key_and_the_file(
    tmp_path: Path, ca: OpenSSLCA, ca_extra: str, top: str, key: str, words: str
) -> None:
    path = write(tmp_path, ca, ca_extra, top)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_a_certificate_that_does_not_parse(tmp_path: Path, ca: OpenSSLCA) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    path = write(tmp_path, ca, f'responder_certificate = "{bad}"')
    with pytest.raises(ConfigError, match=r"ca\[0\]\.responder_certificate: .*bad\.pem is not"):
        load_config(path)


def test_a_missing_index_file(tmp_path: Path, ca: OpenSSLCA) -> None:
    path = write(tmp_path, ca)
    path.write_text(path.read_text().replace(str(ca.index), str(tmp_path / "nope.txt")))
    with pytest.raises(ConfigError, match=r"ca\[0\]\.index: file .*nope\.txt does not exist"):
        load_config(path)


def test_serve_with_a_bad_config_prints_one_line_and_exits_2(
    tmp_path: Path, ca: OpenSSLCA, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, ca, 'validity = "soon"')
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(path) in err[0] and "ca[0].validity" in err[0]


def test_serve_with_a_broken_index_exits_2(
    tmp_path: Path, ca: OpenSSLCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index.txt"
    index.write_text("V\tnot-a-date\t\t01\tunknown\t/CN=x\n")
    path = write(tmp_path, ca)
    path.write_text(path.read_text().replace(str(ca.index), str(index)))
    # serve takes the PIN out of the environment: put it back for the tests after this one
    monkeypatch.setenv("HSM_OCSP_PIN", os.environ.get("HSM_OCSP_PIN", "0000"))
    assert main(["serve", "--config", str(path)]) == 2


def test_durations() -> None:
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("1h30m") == dt.timedelta(minutes=90)
    assert parse_duration("7d") == dt.timedelta(days=7)
    with pytest.raises(ValueError):
        parse_duration("1 hour")


def test_pin_file_readable_by_everyone_is_refused(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by everyone") as info:
        read_pin(TokenConfig(pin_env=None, pin_file=pin), tmp_path / "c.toml")
    assert "1234" not in str(info.value)
    pin.chmod(0o600)
    assert read_pin(TokenConfig(pin_env=None, pin_file=pin)) == "1234"


def test_pin_env_missing_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PIN_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_PIN_VAR is not set"):
        read_pin(TokenConfig(pin_env="NO_SUCH_PIN_VAR"))


def test_a_signing_key_type_we_cannot_use_is_refused_at_load(tmp_path: Path, ca: OpenSSLCA) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa
    from cryptography.x509.oid import NameOID

    key = dsa.generate_private_key(2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DSA responder")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "dsa.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path = write(tmp_path, ca, f'responder_certificate = "{pem}"')
    with pytest.raises(ConfigError, match="unsupported responder key type") as info:
        load_config(path)
    assert info.value.key == "ca[0].responder_certificate"
    assert str(path) in str(info.value)


def test_a_host_without_a_token_in_a_fleet_is_an_edge_needing_no_key_or_index(
    tmp_path: Path, ca: OpenSSLCA
) -> None:
    alone = load_config(write(tmp_path, ca))  # no [token] and no Redis: the defaults
    assert alone.signing and alone.token == TokenConfig()
    edge = write(tmp_path, ca, top='[store]\nredis = "redis://127.0.0.1:6379/0"')
    edge.write_text(
        edge.read_text()
        .replace(f'index = "{ca.index}"\n', "")
        .replace('key = "pkcs11:token=ocsp;object=responder"\n', "")
    )
    config = load_config(edge)
    assert config.edge and config.store.redis == "redis://127.0.0.1:6379/0"
    bad = write(tmp_path, ca, top='[store]\nredis = "http://127.0.0.1:6379"')
    with pytest.raises(ConfigError, match=r"store\.redis: must be a redis://"):
        load_config(bad)


def test_serve_without_a_writable_temporary_directory_is_one_line(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A read-only root file system without a writable /tmp (as container policies ask):
    one line naming TMPDIR and what to do, exit 2, never a traceback."""
    import subprocess
    import sys

    setup = build_ca(tmp_path / "ca", softhsm)
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, server=f'state_dir = "{tmp_path / "state"}"'
    )
    code = (
        "import sys, tempfile; tempfile.tempdir = sys.argv[1]; "
        "from hsm_ocsp.cli.main import main; sys.exit(main(['serve', '--config', sys.argv[2]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "no-such-dir"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HSM_OCSP_PIN": softhsm.pin},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "TMPDIR" in lines[0] and "Traceback" not in done.stderr, lines


def test_include_ca_certificate_is_a_roots_by_default_and_may_be_set(tmp_path: Path) -> None:
    """``auto``: a root (self-issued) CA's own answers carry its certificate, which every
    client measured accepts; an intermediate's do not (Go's x/crypto/ocsp refuses an
    embedded certificate the issuer did not sign). true or false overrides."""
    import dataclasses

    ca = OpenSSLCA(tmp_path / "ca")
    intermediate = x509.load_pem_x509_certificate(
        ca.sign_responder(ca.key.public_key()).read_bytes()
    )
    for value, root, expected in (
        ("", True, True),
        ("", False, False),
        ("include_ca_certificate = false", True, False),
        ("include_ca_certificate = true", False, True),
    ):
        path = tmp_path / "config.toml"
        path.write_text(
            f'[[ca]]\nname = "root"\ncertificate = "{ca.cert_path}"\nindex = "{ca.index}"\n'
            f'key = "pkcs11:token=t;object=k"\n{value}\n'
        )
        config = load_config(path).cas[0]
        if not root:
            config = dataclasses.replace(config, certificate=intermediate)
        assert config.includes_ca_certificate is expected, (value, root)
    path.write_text(path.read_text().replace("= true", '= "yes"'))
    with pytest.raises(ConfigError, match="include_ca_certificate"):
        load_config(path)


@pytest.mark.parametrize(
    "fault", ["state_dir under a file", "state_dir a file", "pin_file missing"]
)
def test_serve_with_a_path_it_cannot_use_is_one_line_naming_the_key(
    tmp_path: Path, softhsm: SoftHSM, fault: str
) -> None:
    """Every path serve needs, missing or unusable: one line naming the key and the path,
    exit 2, never a traceback."""
    import subprocess

    setup = build_ca(tmp_path / "ca", softhsm)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    state, key, path = str(tmp_path / "state"), "server.state_dir", ""
    if fault == "state_dir under a file":
        state = path = str(blocker / "state")
    elif fault == "state_dir a file":
        state = path = str(blocker)
    config = write_config(
        tmp_path / "config.toml", {"root": setup}, server=f'state_dir = "{state}"'
    )
    env = {**os.environ, "HSM_OCSP_PIN": softhsm.pin}
    if fault == "pin_file missing":
        key, path = "token.pin_file", str(tmp_path / "no-such-pin")
        text = config.read_text().replace("[token]\n", f'[token]\npin_file = "{path}"\n')
        config.write_text(text.replace('pin_env = "HSM_OCSP_PIN"\n', ""))
        env.pop("HSM_OCSP_PIN")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hsm-ocsp"), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    assert key in lines[0] and path in lines[0], lines
