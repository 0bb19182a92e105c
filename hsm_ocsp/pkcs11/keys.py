"""Key pairs on a PKCS#11 token: make them, find them, read their public half.

Blocking calls on an open python-pkcs11 session; callers own the session and
run this on the thread that owns the module (the CLI's main thread).
``open_session`` is how the command-line tools
(keygen, csr, demo) reach the token: module from ``--module`` or the config's
``[token]`` table, PIN from the environment or the PIN file, never argv.
"""

from __future__ import annotations

import os
from typing import Any

import pkcs11
from asn1crypto import core as asn1_core
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import DEFAULT, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from ..core.errors import TokenError
from ..core.pkcs11_uri import Pkcs11Uri

__all__ = [
    "ALGORITHMS",
    "existing_objects",
    "find_private_key",
    "find_public_key",
    "generate_key_pair",
    "open_session",
    "public_key_from_token",
    "select_token",
]

ALGORITHMS = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519")
_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
_ED25519_OID = "1.3.101.112"


# Exactly what a signing key needs. python-pkcs11 would add every capability
# attribute with an explicit value (RSA keys able to decrypt and unwrap, EC keys
# able to derive), which strict tokens refuse: tpm2-pkcs11 for EC (verify and
# decrypt are one TPM attribute), Caml Crush for RSA (wrap with decrypt).
# DEFAULT leaves an attribute out of the template, to the token.
_NOT_ASKED = dict.fromkeys((Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE), DEFAULT)


def _private_template() -> dict[Attribute, Any]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        **_NOT_ASKED,
    }


def _public_template() -> dict[Attribute, Any]:
    return {
        Attribute.TOKEN: True,
        Attribute.VERIFY: True,
        **dict.fromkeys((Attribute.ENCRYPT, Attribute.WRAP), DEFAULT),
    }


def generate_key_pair(
    session: Any, algorithm: str, *, label: str | None, key_id: bytes | None
) -> tuple[Any, Any, bytes]:
    """Make a key pair on the token; returns (public, private, id).

    The private key is token-resident, private, sensitive and not
    extractable. A random 8-byte id is made when none is given.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    key_id = key_id if key_id is not None else os.urandom(8)
    common: dict[Attribute, Any] = {Attribute.ID: key_id}
    if label is not None:
        common[Attribute.LABEL] = label
    private = {**_private_template(), **common}
    public = {**_public_template(), **common}
    if algorithm.startswith("rsa-"):
        bits = int(algorithm.split("-")[1])
        pub, priv = session.generate_keypair(
            KeyType.RSA,
            bits,
            store=True,
            public_template={**public, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
            private_template=private,
        )
        return pub, priv, key_id
    if algorithm in _CURVES:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[algorithm])},
            local=True,
        )
        pub, priv = params.generate_keypair(
            store=True, public_template=public, private_template=private
        )
        return pub, priv, key_id
    params = session.create_domain_parameters(
        KeyType.EC_EDWARDS,
        {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)},
        local=True,
    )
    pub, priv = params.generate_keypair(
        store=True,
        public_template=public,
        private_template=private,
        mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
    )
    return pub, priv, key_id


def public_key_from_token(
    public: Any,
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey | (ed25519.Ed25519PublicKey):
    """The cryptography public key of a token public-key object."""
    key_type = public[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        n = int.from_bytes(public[Attribute.MODULUS], "big")
        e = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if key_type == KeyType.EC:
        loaded = serialization.load_der_public_key(encode_ec_public_key(public))
        assert isinstance(loaded, ec.EllipticCurvePublicKey)
        return loaded
    if key_type == KeyType.EC_EDWARDS:
        point = public[Attribute.EC_POINT]
        raw = asn1_core.OctetString.load(point).native if len(point) != 32 else point
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    raise ValueError(f"unsupported key type {key_type!r}")


def find_public_key(session: Any, *, label: str | None, key_id: bytes | None) -> Any:
    """The public-key object that pairs with a private key (same label/id)."""
    return session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label, id=key_id)


def find_private_key(session: Any, *, label: str | None, key_id: bytes | None) -> Any:
    """The private-key object a URI names; python-pkcs11's NoSuchKey if none."""
    return session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label, id=key_id)


_CLASS_NAMES = {
    ObjectClass.PRIVATE_KEY: "private key",
    ObjectClass.PUBLIC_KEY: "public key",
    ObjectClass.SECRET_KEY: "secret key",
    ObjectClass.CERTIFICATE: "certificate",
}


def existing_objects(session: Any, *, label: str | None, key_id: bytes | None) -> list[str]:
    """Objects that already carry this label or this id, described in words."""
    found = []
    for attribute, value, what in (
        (Attribute.LABEL, label, f"label {label!r}"),
        (Attribute.ID, key_id, f"id {key_id.hex() if key_id else ''}"),
    ):
        if value is None:
            continue
        for obj in session.get_objects({attribute: value}):
            kind = _CLASS_NAMES.get(obj.object_class, "object")
            found.append(f"a {kind} with {what}")
    return found


def select_token(lib: Any, uri: Pkcs11Uri) -> Any:
    """The one token the URI's token=, serial=, manufacturer= and model= name (RFC 7512).

    python-pkcs11 compares serial= as bytes and knows no manufacturer= or model=,
    so the tokens are matched here. NoSuchToken or MultipleTokensReturned otherwise.
    """
    wanted = {
        "label": uri.token,
        "serial": None if uri.serial is None else uri.serial.encode(),
        "manufacturer_id": uri.manufacturer,
        "model": uri.model,
    }
    found = []
    for slot in lib.get_slots(token_present=True):
        token = slot.get_token()
        if all(v is None or _field(token, k) == v for k, v in wanted.items()):
            found.append(token)
    if not found:
        raise pkcs11.exceptions.NoSuchToken(str(uri))
    if len(found) > 1:
        raise pkcs11.exceptions.MultipleTokensReturned(str(uri))
    return found[0]


def _field(token: Any, name: str) -> Any:
    value = getattr(token, name)
    return value.rstrip(b" \0") if isinstance(value, bytes) else value.rstrip()


def open_session(module: str, pin: str, uri: Pkcs11Uri, *, rw: bool = False) -> Any:
    """Log in to the token the URI names; TokenError (never with the PIN) if not possible."""
    from .token_errors import describe_error

    try:
        lib = pkcs11.lib(module)
        token = select_token(lib, uri)
        return token.open(user_pin=pin, rw=rw)
    except pkcs11.PKCS11Error as exc:  # a module that cannot be loaded too
        where = f"token {uri.token!r}" if uri.token else "the token"
        raise TokenError(
            f"cannot open {where} with module {module}: {describe_error(exc)}"
        ) from None
