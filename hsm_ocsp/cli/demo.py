"""``hsm-ocsp demo``: a SoftHSM token, a demo CA and a responder, ready to query.

Everything lives in one directory and is made only when missing, so a second
run reuses the token, the key, the CA, its certificates and the index:

    DIR/softhsm/      softhsm2.conf, tokens/, so-pin (made by softhsm/init-token.sh)
    DIR/ca/           openssl.cnf, ca.key, ca.pem, index.txt, good.pem, revoked.pem, ...
    DIR/responder.csr the request made by ``csr`` for the token key made by ``keygen``
    DIR/responder.pem the delegated responder certificate (``openssl ca -extensions ocsp``)
    DIR/config.toml   the responder configuration

Then it serves through the normal ``serve`` path on 127.0.0.1 and prints the
``openssl ocsp`` lines that ask for a good and a revoked certificate. The
user PIN comes from ``HSM_OCSP_PIN`` (``make demo`` sets 1234); the SO PIN is
generated once into ``DIR/softhsm/so-pin``.

``init-token.sh`` lives in the checkout's top-level ``softhsm/`` and ships inside
the wheel as ``hsm_ocsp/softhsm/``, so the demo works from an installed wheel as
well as from a checkout.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shlex
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import exceptions as p11e

from ..config.file import load_config
from ..config.model import DEFAULT_MODULE, DEFAULT_PIN_ENV
from ..core.errors import ConfigError
from ..core.index import parse_index
from ..core.pkcs11_uri import Pkcs11Uri
from ..core.signing import PublicKey
from ..pkcs11.keys import find_private_key, find_public_key, open_session, public_key_from_token
from .csr import build_csr, parse_subject
from .keygen import generate
from .softhsm_token import init_softhsm_token, run

__all__ = ["DemoSetup", "run_demo", "set_up"]

TOKEN_LABEL = "hsm-ocsp-demo"
KEY_LABEL = "ocsp-responder"
KEY_ALGORITHM = "ec-p256"
RESPONDER_SUBJECT = "/O=hsm-ocsp demo/CN=hsm-ocsp demo OCSP responder"
CA_SUBJECT = "/O=hsm-ocsp demo/CN=hsm-ocsp Demo CA"
# name -> openssl ca -revoke options (None: stays good)
LEAVES: dict[str, tuple[str, ...] | None] = {
    "good": None,
    "also-good": None,
    "revoked": ("-crl_reason", "keyCompromise"),
    "superseded": ("-crl_reason", "superseded"),
}


@dataclasses.dataclass(frozen=True)
class DemoSetup:
    dir: Path
    softhsm_conf: Path
    config: Path
    ca_cert: Path
    certs: dict[str, Path]
    port: int
    made: tuple[str, ...]  # what this run created; empty when all was reused

    def ocsp_command(self, name: str) -> str:
        return shlex.join(
            [
                "openssl",
                "ocsp",
                "-issuer",
                str(self.ca_cert),
                "-cert",
                str(self.certs[name]),
                "-url",
                f"http://127.0.0.1:{self.port}/",
                "-CAfile",
                str(self.ca_cert),
            ]
        )


def openssl_cnf(ca_dir: Path) -> str:
    """The demo CA's ``openssl ca`` configuration (data/openssl-ca.cnf.in) for ``ca_dir``."""
    template = Path(__file__).resolve().parent.parent / "data" / "openssl-ca.cnf.in"
    return template.read_text().format(dir=ca_dir)


def _make_token(softhsm_dir: Path, pin: str) -> Path:
    conf = softhsm_dir / "softhsm2.conf"
    softhsm_dir.mkdir(parents=True, exist_ok=True)
    so_pin_file = softhsm_dir / "so-pin"
    if not so_pin_file.exists():
        so_pin_file.touch(mode=0o600)
        so_pin_file.write_text(secrets.token_hex(8) + "\n")
    so_pin = so_pin_file.read_text().strip()
    init_softhsm_token(conf, label=TOKEN_LABEL, pin=pin, so_pin=so_pin)
    return conf


def _responder_key(module: str, pin: str, uri: Pkcs11Uri, made: list[str]) -> PublicKey:
    with open_session(module, pin, uri) as session:
        try:
            find_private_key(session, label=uri.object, key_id=None)
            return public_key_from_token(find_public_key(session, label=uri.object, key_id=None))
        except p11e.NoSuchKey:
            pass
    made.append("responder key")
    return generate(module, pin, uri, KEY_ALGORITHM).public_key


def _make_ca(ca_dir: Path, made: list[str]) -> Path:
    ca_cert = ca_dir / "ca.pem"
    if ca_cert.exists():
        return ca_cert
    (ca_dir / "newcerts").mkdir(parents=True, exist_ok=True)
    cnf = ca_dir / "openssl.cnf"
    cnf.write_text(openssl_cnf(ca_dir))
    (ca_dir / "index.txt").write_text("")
    (ca_dir / "serial").write_text("1000\n")
    (ca_dir / "crlnumber").write_text("01\n")
    key = ca_dir / "ca.key"
    run(
        "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key
    )
    key.chmod(0o600)
    partial = ca_dir / "ca.pem.new"
    run(
        "openssl",
        "req",
        "-config",
        cnf,
        "-x509",
        "-new",
        "-key",
        key,
        "-subj",
        CA_SUBJECT,
        "-days",
        "3650",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-addext",
        "subjectKeyIdentifier=hash",
        "-out",
        partial,
    )
    partial.rename(ca_cert)
    made.append("demo CA")
    return ca_cert


def _same_key(cert_path: Path, public_key: PublicKey) -> bool:
    if not cert_path.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == public_key.public_bytes(*spki)


def _sign(ca_dir: Path, csr: Path, out: Path, extensions: str) -> None:
    partial = out.with_suffix(".pem.new")
    run(
        "openssl",
        "ca",
        "-batch",
        "-config",
        ca_dir / "openssl.cnf",
        "-extensions",
        extensions,
        "-notext",
        "-in",
        csr,
        "-out",
        partial,
    )
    partial.rename(out)


def _leaves(ca_dir: Path, made: list[str]) -> dict[str, Path]:
    certs = {}
    for name, revoke in LEAVES.items():
        pem = ca_dir / f"{name}.pem"
        if not pem.exists():
            csr = ca_dir / f"{name}.csr"
            run(
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                ca_dir / f"{name}.key",
                "-subj",
                f"/O=hsm-ocsp demo/CN={name}.demo.example",
                "-out",
                csr,
            )
            _sign(ca_dir, csr, pem, "leaf")
            made.append(f"certificate {name}")
        if revoke is not None:
            serial = x509.load_pem_x509_certificate(pem.read_bytes()).serial_number
            index = ca_dir / "index.txt"
            if parse_index(index.read_bytes(), index).entries.get(serial) is None:
                run("openssl", "ca", "-config", ca_dir / "openssl.cnf", "-revoke", pem, *revoke)
                made.append(f"revocation of {name}")
        certs[name] = pem
    return certs


def _gencrl(ca_dir: Path, made: list[str]) -> None:
    """The demo CA's CRL (DER), made anew each run: what a CA publishes."""
    pem, der = ca_dir / "ca.crl.pem", ca_dir / "ca.crl"
    run("openssl", "ca", "-config", ca_dir / "openssl.cnf", "-gencrl", "-crldays", "7", "-out", pem)
    run("openssl", "crl", "-in", pem, "-outform", "DER", "-out", der.with_suffix(".new"))
    der.with_suffix(".new").replace(der)
    made.append("CRL")


def _write_config(
    path: Path, port: int, uri: Pkcs11Uri, made: list[str], status: str = "index"
) -> None:
    source = (
        'index = "ca/index.txt"'
        if status == "index"
        else "# status from the CA's CRL and the certificates it issued\n"
        'crl = "ca/ca.crl"\nissued = "ca/newcerts"'
    )
    text = f"""\
# hsm-ocsp demo configuration, written by `hsm-ocsp demo`.
# Serve it yourself with:
#   SOFTHSM2_CONF={path.parent / "softhsm" / "softhsm2.conf"} hsm-ocsp serve --config {path}
[server]
listen = "127.0.0.1:{port}"
workers = 1

[token]
module = "{DEFAULT_MODULE}"
pin_env = "{DEFAULT_PIN_ENV}"

[[ca]]
name = "demo"
certificate = "ca/ca.pem"
{source}
responder_certificate = "responder.pem"
key = "{uri}"
validity = "1d"
"""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        made.append("config.toml")


def set_up(directory: Path, port: int, pin: str, status: str = "index") -> DemoSetup:
    """Make what is missing in ``directory``; reuse what is there. ``status``: "index"
    (the CA's index.txt) or "crl" (its CRL, made now)."""
    directory = directory.resolve()
    made: list[str] = []
    conf = _make_token(directory / "softhsm", pin)
    # SoftHSM reads its config when python-pkcs11 initialises the module, once
    # per process: it must point at the demo token before the first PKCS#11 call.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    uri = Pkcs11Uri(token=TOKEN_LABEL, object=KEY_LABEL)
    public_key = _responder_key(DEFAULT_MODULE, pin, uri, made)
    ca_dir = directory / "ca"
    ca_cert = _make_ca(ca_dir, made)
    responder = directory / "responder.pem"
    if not _same_key(responder, public_key):
        csr = directory / "responder.csr"
        request = build_csr(DEFAULT_MODULE, pin, uri, parse_subject(RESPONDER_SUBJECT))
        csr.write_bytes(request.public_bytes(serialization.Encoding.PEM))
        _sign(ca_dir, csr, responder, "ocsp")
        made.append("responder certificate")
    certs = _leaves(ca_dir, made)
    if not (ca_dir / "crlnumber").exists():  # a demo directory of an older version
        (ca_dir / "crlnumber").write_text("01\n")
    if status == "crl":
        _gencrl(ca_dir, made)
    config = directory / "config.toml"
    _write_config(config, port, uri, made, status)
    return DemoSetup(directory, conf, config, ca_cert, certs, port, tuple(made))


def run_demo(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise ConfigError("(command line)", "--dir", f"{directory} is not a directory")
    if not 0 < args.port < 65536:
        raise ConfigError("(command line)", "--port", f"{args.port} is not a TCP port")
    pin = os.environ.get(DEFAULT_PIN_ENV)
    if not pin:
        raise ConfigError(
            "(environment)", DEFAULT_PIN_ENV, "set the demo token's user PIN (make demo uses 1234)"
        )
    setup = set_up(directory, args.port, pin, args.status)
    if setup.made:
        print(f"demo: made {', '.join(setup.made)} in {setup.dir}")
    else:
        print(f"demo: reusing token, key, CA and certificates in {setup.dir}")
    print(f"config: {setup.config}")
    print("ask for a good and a revoked certificate:")
    print(f"  {setup.ocsp_command('good')}")
    print(f"  {setup.ocsp_command('revoked')}")
    sys.stdout.flush()
    if args.no_serve:
        return 0
    from ..core.logs import setup_logging
    from ..server.supervisor import run_server

    config = load_config(setup.config)
    setup_logging(config.server.log_format)
    print(f"serving on http://127.0.0.1:{setup.port}/ (Ctrl-C stops)", flush=True)
    return run_server(config)
