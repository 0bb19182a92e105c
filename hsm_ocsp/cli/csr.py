"""``hsm-ocsp csr``: a PKCS#10 request for the token key, signed on the token.

SHA-256 for RSA and P-256, SHA-384 for P-384, pure Ed25519. The subject is
RFC 4514 (``CN=ocsp.example.com,O=Example``, most specific first) or the
OpenSSL form (``/O=Example/CN=ocsp.example.com``, most general first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from pkcs11 import exceptions as p11e

from ..config.pin import module_and_pin
from ..core.errors import ConfigError, TokenError
from ..core.pkcs11_uri import Pkcs11Uri
from ..core.signing import PublicKey, scheme_for_public_key
from ..pkcs11.keys import (
    find_private_key,
    find_public_key,
    open_session,
    public_key_from_token,
)
from ..pkcs11.private_key import session_signer, token_private_key
from ..pkcs11.token_errors import describe_error
from .keygen import parse_key_uri

__all__ = ["build_csr", "csr_hash", "parse_subject", "run_csr"]

# Names OpenSSL writes that RFC 4514 parsing in cryptography does not know.
_EXTRA_NAMES = {
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "title": NameOID.TITLE,
    "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
}


def _escape_rfc4514(value: str) -> str:
    out = []
    for i, char in enumerate(value):
        if (
            char in ',+"\\<>;='
            or (char in "# " and i == 0)
            or (char == " " and i == len(value) - 1)
        ):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _openssl_to_rfc4514(text: str) -> str:
    """``/O=Example/CN=x`` -> ``CN=x,O=Example``; ``\\/`` is a literal slash."""
    rdns: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text[1:]:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "/":
            rdns.append("".join(current))
            current = []
        else:
            current.append(char)
    rdns.append("".join(current))
    parts = []
    for rdn in rdns:
        attributes = []
        for attribute in rdn.split("+"):
            name, eq, value = attribute.partition("=")
            if not eq or not name.strip():
                raise ValueError(f"{attribute!r} is not name=value")
            attributes.append(f"{name.strip()}={_escape_rfc4514(value)}")
        parts.append("+".join(attributes))
    return ",".join(reversed(parts))


def parse_subject(text: str) -> x509.Name:
    """A subject in RFC 4514 or OpenSSL ``/``-form; ValueError if neither."""
    text = text.strip()
    if not text:
        raise ValueError("the subject is empty")
    rfc4514 = _openssl_to_rfc4514(text) if text.startswith("/") else text
    try:
        name = x509.Name.from_rfc4514_string(rfc4514, _EXTRA_NAMES)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a distinguished name: {exc}") from None
    if not list(name):
        raise ValueError("the subject is empty")
    return name


def csr_hash(public_key: PublicKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash a request for this key is signed with (None: Ed25519 is pure)."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return None
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp384r1":
        return hashes.SHA384()
    if isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return hashes.SHA256()
    raise ValueError(f"unsupported key type {type(public_key).__name__}")


def build_csr(
    module: str, pin: str, uri: Pkcs11Uri, subject: x509.Name
) -> x509.CertificateSigningRequest:
    """The request for the key ``uri`` names, signed by that key on the token."""
    with open_session(module, pin, uri) as session:
        try:
            private = find_private_key(session, label=uri.object, key_id=uri.id)
            public = find_public_key(session, label=uri.object, key_id=uri.id)
        except p11e.PKCS11Error as exc:
            raise TokenError(f"key {uri}: {describe_error(exc)}") from None
        public_key = public_key_from_token(public)
        algorithm = csr_hash(public_key)
        scheme = scheme_for_public_key(
            public_key, signature_hash=algorithm.name if algorithm else "sha256"
        )
        key = token_private_key(public_key, scheme, session_signer(private, scheme))
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        try:
            return builder.sign(key, algorithm)
        except p11e.PKCS11Error as exc:
            raise TokenError(f"key {uri}: signing failed: {describe_error(exc)}") from None


def run_csr(args: argparse.Namespace) -> int:
    uri = parse_key_uri(args.key)
    try:
        subject = parse_subject(args.subject)
    except ValueError as exc:
        raise ConfigError("(command line)", "--subject", str(exc)) from None
    module, pin = module_and_pin(args.config, args.module)
    pem = build_csr(module, pin, uri, subject).public_bytes(serialization.Encoding.PEM)
    if args.out:
        Path(args.out).write_bytes(pem)
    else:
        sys.stdout.write(pem.decode("ascii"))
    return 0
