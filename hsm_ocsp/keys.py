"""Key pairs on a PKCS#11 token: make them, and read their public half.

Blocking calls on an open python-pkcs11 session; callers own the session and
run this on the thread that owns the module (the CLI's main thread).
"""

from __future__ import annotations

import os
from typing import Any

from asn1crypto import core as asn1_core
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

__all__ = ["ALGORITHMS", "generate_key_pair", "public_key_from_token"]

ALGORITHMS = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519")
_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
_ED25519_OID = "1.3.101.112"


def _private_template() -> dict[Attribute, Any]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
    }


def _public_template() -> dict[Attribute, Any]:
    return {Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True}


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
