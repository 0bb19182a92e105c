"""``hsm-ocsp keygen``: make the responder key pair on the token, never replace one.

The private key is token-resident, private, sensitive and not extractable
(``keys.generate_key_pair``). A key whose label or id is already on the token
is refused before anything is written, so the token is left as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute

from ..config.pin import module_and_pin
from ..core.errors import ConfigError, TokenError
from ..core.pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri
from ..core.signing import PublicKey
from ..pkcs11.keys import (
    existing_objects,
    generate_key_pair,
    open_session,
    public_key_from_token,
)
from ..pkcs11.token_errors import describe_error, return_code

__all__ = ["NewKey", "generate", "run_keygen"]


@dataclasses.dataclass(frozen=True)
class NewKey:
    """A key pair just made: the URI that names it (with its id) and its public half."""

    uri: Pkcs11Uri
    public_key: PublicKey

    @property
    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")


def parse_key_uri(text: str, option: str = "--key") -> Pkcs11Uri:
    """A private-key URI from the command line; ConfigError (exit 2) if it is not one."""
    try:
        uri = parse_pkcs11_uri(text)
    except ValueError as exc:
        raise ConfigError("(command line)", option, str(exc)) from None
    if uri.type not in (None, "private"):
        raise ConfigError("(command line)", option, "the URI must name a private key")
    return uri


def generate(module: str, pin: str, uri: Pkcs11Uri, algorithm: str) -> NewKey:
    """Make a key pair with the URI's label and id (an id is made when it has none).

    TokenError when the token cannot be opened or already holds an object with
    that label or id; then nothing has been written.
    """
    with open_session(module, pin, uri, rw=True) as session:
        taken = existing_objects(session, label=uri.object, key_id=uri.id)
        if taken:
            raise TokenError(
                f"the token already holds {', '.join(taken)}; keygen never replaces "
                "a key: choose another object= (and id=) in the URI"
            )
        key_id = uri.id
        while key_id is None:
            candidate = os.urandom(8)
            if not existing_objects(session, label=None, key_id=candidate):
                key_id = candidate
        try:
            public, private, key_id = generate_key_pair(
                session, algorithm, label=uri.object, key_id=key_id
            )
        except pkcs11.PKCS11Error as exc:
            raise TokenError(_refused(exc, algorithm, uri, module)) from None
        _keep_only_if_protected(public, private, uri)
        public_key = public_key_from_token(public)
    full = dataclasses.replace(uri, id=key_id, type=None)
    return NewKey(uri=full, public_key=public_key)


def _refused(exc: pkcs11.PKCS11Error, algorithm: str, uri: Pkcs11Uri, module: str) -> str:
    """One line: what was done, where, the return code, and what to try."""
    what = f"keygen {algorithm} for {uri} with {module}: the token refused it"
    if isinstance(exc, pkcs11.exceptions.MechanismInvalid):
        kind = {"ec": "EC", "rsa": "RSA", "ed25519": "Ed25519"}[algorithm.split("-")[0]]
        other = "rsa-2048" if not algorithm.startswith("rsa-") else "ec-p256"
        return (
            f"{what} ({return_code(exc)}): this token has no {kind} key generation; "
            f"use --algorithm {other}"
        )
    return f"{what} ({describe_error(exc)})"


def _keep_only_if_protected(public: Any, private: Any, uri: Pkcs11Uri) -> None:
    """Read the new private key back; delete the pair if the token made it exportable."""
    try:
        sensitive = private[Attribute.SENSITIVE]
        extractable = private[Attribute.EXTRACTABLE]
    except pkcs11.PKCS11Error:  # a token may not show them; it took the template
        return
    if sensitive and not extractable:
        return
    for obj in (private, public):
        obj.destroy()
    raise TokenError(
        f"keygen for {uri}: the token made the private key "
        f"{'extractable' if extractable else 'not sensitive'} although asked not to; "
        "the key pair was deleted"
    )


def parse_key_id(text: str) -> bytes:
    """``--id``: hex (``0x0102``, ``0102``, ``01:02``); ConfigError if it is not."""
    digits = text.lower().removeprefix("0x").replace(":", "")
    try:
        key_id = bytes.fromhex(digits)
    except ValueError:
        key_id = b""
    if not key_id or len(key_id) > 64:
        raise ConfigError("(command line)", "--id", f"{text!r}: 1 to 64 bytes in hex expected")
    return key_id


def run_keygen(args: argparse.Namespace) -> int:
    uri = parse_key_uri(args.key)
    if args.id is not None:
        key_id = parse_key_id(args.id)
        if uri.id is not None and uri.id != key_id:
            raise ConfigError("(command line)", "--id", "differs from the id in --key")
        uri = dataclasses.replace(uri, id=key_id)
    module, pin = module_and_pin(args.config, args.module)
    key = generate(module, pin, uri, args.algorithm)
    print(key.public_pem, end="")
    print(key.uri)
    return 0
