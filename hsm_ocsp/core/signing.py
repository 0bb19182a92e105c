"""Signature schemes as a responder uses them with a PKCS#11 token.

The host hashes and the token signs with a raw mechanism (``RSA_PKCS`` over a
DigestInfo, ``RSA_PKCS_PSS`` over a digest, ``ECDSA`` over a digest,
``EDDSA`` over the message): that works on every conformant token. This
module is pure: it prepares the bytes for the token, turns what the token
returns into the signature that goes on the wire, and gives the
AlgorithmIdentifier encoded as the Baseline Requirements (7.1.3.2) list it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import der

__all__ = ["RsaPadding", "SchemeKind", "SignatureScheme", "scheme_for_public_key"]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_HASH_OID = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_RSA_OID = {
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_ECDSA_OID = {
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_CURVE_HASH = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}
_DIGEST_SIZE = {"sha256": 32, "sha384": 48, "sha512": 64}


def _hash_identifier(name: str) -> bytes:
    return der.sequence(der.oid(_HASH_OID[name]), der.null())


class SchemeKind(enum.StrEnum):
    RSA_PKCS1 = "rsa-pkcs1"
    RSA_PSS = "rsa-pss"
    ECDSA = "ecdsa"
    EDDSA = "eddsa"


class RsaPadding(enum.StrEnum):
    """``ca.rsa_padding``."""

    PKCS1 = "pkcs1"
    PSS = "pss"


@dataclasses.dataclass(frozen=True)
class SignatureScheme:
    """How to sign for one key: mechanism, host hash and wire encoding."""

    kind: SchemeKind
    hash_name: str | None  # None for EdDSA
    mechanism: str  # PKCS#11 mechanism name: RSA_PKCS, RSA_PKCS_PSS, ECDSA, EDDSA
    algorithm_identifier: bytes

    def prepare(self, message: bytes) -> bytes:
        """The bytes to hand to the token's raw mechanism."""
        if self.hash_name is None:
            return message
        digest = hashlib.new(self.hash_name, message).digest()
        if self.kind is SchemeKind.RSA_PKCS1:
            return der.sequence(_hash_identifier(self.hash_name), der.octet_string(digest))
        return digest

    def finish(self, raw: bytes) -> bytes:
        """The signature as it goes into the BIT STRING."""
        if self.kind is not SchemeKind.ECDSA:
            return raw
        half = len(raw) // 2
        if len(raw) % 2 or not half:
            raise ValueError(f"ECDSA signature of {len(raw)} bytes is not r||s")
        r = int.from_bytes(raw[:half], "big")
        s = int.from_bytes(raw[half:], "big")
        return der.sequence(der.integer(r), der.integer(s))

    @property
    def pss_salt_length(self) -> int:
        assert self.hash_name is not None
        return _DIGEST_SIZE[self.hash_name]


def scheme_for_public_key(
    public_key: object,
    *,
    signature_hash: str = "sha256",
    rsa_padding: RsaPadding = RsaPadding.PKCS1,
) -> SignatureScheme:
    """Pick the scheme for a responder public key.

    RSA takes ``signature_hash`` and ``rsa_padding`` from the config; ECDSA
    uses the hash that matches the curve (P-256/SHA-256, P-384/SHA-384), as
    the Baseline Requirements ask; Ed25519 is pure.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        if signature_hash not in _RSA_OID:
            raise ValueError(f"unsupported RSA hash {signature_hash}")
        if rsa_padding == RsaPadding.PSS:
            hash_id = _hash_identifier(signature_hash)
            params = der.sequence(
                der.explicit(0, hash_id),
                der.explicit(1, der.sequence(der.oid("1.2.840.113549.1.1.8"), hash_id)),
                der.explicit(2, der.integer(_DIGEST_SIZE[signature_hash])),
            )
            ident = der.sequence(der.oid("1.2.840.113549.1.1.10"), params)
            return SignatureScheme(SchemeKind.RSA_PSS, signature_hash, "RSA_PKCS_PSS", ident)
        ident = der.sequence(der.oid(_RSA_OID[signature_hash]), der.null())
        return SignatureScheme(SchemeKind.RSA_PKCS1, signature_hash, "RSA_PKCS", ident)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        hash_name = _CURVE_HASH.get(public_key.curve.name)
        if hash_name is None:
            raise ValueError(f"unsupported curve {public_key.curve.name}")
        return SignatureScheme(
            SchemeKind.ECDSA, hash_name, "ECDSA", der.sequence(der.oid(_ECDSA_OID[hash_name]))
        )
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return SignatureScheme(
            SchemeKind.EDDSA, None, "EDDSA", der.sequence(der.oid("1.3.101.112"))
        )
    raise ValueError(f"unsupported responder key type {type(public_key).__name__}")


def verify(public_key: object, scheme: SignatureScheme, message: bytes, signature: bytes) -> None:
    """Check a signature made with ``scheme``; InvalidSignature if it does not verify.

    Used at start-up to prove that the token key belongs to the certificate.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    algorithms: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
        "sha256": hashes.SHA256,
        "sha384": hashes.SHA384,
        "sha512": hashes.SHA512,
    }
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, message)
        return
    assert scheme.hash_name is not None
    algorithm = algorithms[scheme.hash_name]()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, message, ec.ECDSA(algorithm))
    elif isinstance(public_key, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
        if scheme.kind is SchemeKind.RSA_PSS:
            pad = padding.PSS(padding.MGF1(algorithm), scheme.pss_salt_length)
        public_key.verify(signature, message, pad, algorithm)
    else:
        raise ValueError(f"unsupported key type {type(public_key).__name__}")
