"""A private key on the token, in the shape cryptography's builders accept.

``CertificateSigningRequestBuilder.sign`` (and the certificate, CRL and OCSP
builders) check ``isinstance`` against cryptography's private-key classes and
then call ``key.sign(...)`` (FACTS.md; checked with cryptography 48). So a
subclass whose ``sign`` asks the token is enough to sign on the token. The
key never leaves it: ``private_bytes`` and friends refuse.

How the signature is made is injected as ``sign_message(message) -> signature``
bound to one :class:`~hsm_ocsp.signing.SignatureScheme`: either
:func:`session_signer` (an open session on the caller's thread, as the CLI
does) or ``lambda m: token.sign_blocking(name, m)`` (the Token's own thread).
``sign`` refuses a hash or padding other than the scheme's, so the signature
always matches the algorithm the builder writes into the structure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pkcs11 import Mechanism
from pkcs11.mechanisms import MGF

from .signing import SignatureScheme

__all__ = ["TokenPrivateKey", "session_signer", "token_private_key"]

SignMessage = Callable[[bytes], bytes]

_PSS = {
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}


def session_signer(private_key: Any, scheme: SignatureScheme) -> SignMessage:
    """Sign with a python-pkcs11 private-key object on the calling thread."""
    mechanism = Mechanism[scheme.mechanism]
    param = None
    if scheme.kind == "rsa-pss":
        assert scheme.hash_name is not None
        hash_mechanism, mgf = _PSS[scheme.hash_name]
        param = (hash_mechanism, mgf, scheme.pss_salt_length)

    def sign_message(message: bytes) -> bytes:
        raw: bytes = private_key.sign(
            scheme.prepare(message), mechanism=mechanism, mechanism_param=param
        )
        return scheme.finish(raw)

    return sign_message


def _no_export() -> NoReturn:
    raise TypeError("the private key stays on the token; it cannot be exported")


def _check_hash(scheme: SignatureScheme, algorithm: object) -> None:
    if isinstance(algorithm, Prehashed):
        raise ValueError("the token key signs messages, not pre-hashed digests")
    name = getattr(algorithm, "name", None)
    if name != scheme.hash_name:
        raise ValueError(f"this token key signs with {scheme.hash_name}, not {name}")


class _TokenRSAPrivateKey(rsa.RSAPrivateKey):
    def __init__(
        self, public_key: rsa.RSAPublicKey, scheme: SignatureScheme, sign: SignMessage
    ) -> None:
        self._public_key = public_key
        self.scheme = scheme
        self._sign = sign

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        padding: padding.AsymmetricPadding,
        algorithm: object,  # Prehashed | HashAlgorithm (| NoDigestInfo from cryptography 48)
    ) -> bytes:
        wanted = "rsa-pss" if padding.name == "EMSA-PSS" else "rsa-pkcs1"
        if wanted != self.scheme.kind:
            raise ValueError(f"this token key signs with {self.scheme.kind}, not {wanted}")
        _check_hash(self.scheme, algorithm)
        return self._sign(bytes(data))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise TypeError("the token key is for signing only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _no_export()

    def private_bytes(self, *args: Any) -> bytes:
        _no_export()

    def __copy__(self) -> _TokenRSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TokenRSAPrivateKey:
        return self


class _TokenECPrivateKey(ec.EllipticCurvePrivateKey):
    def __init__(
        self, public_key: ec.EllipticCurvePublicKey, scheme: SignatureScheme, sign: SignMessage
    ) -> None:
        self._public_key = public_key
        self.scheme = scheme
        self._sign = sign

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("the token key signs with ECDSA only")
        _check_hash(self.scheme, signature_algorithm.algorithm)
        return self._sign(bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise TypeError("the token key is for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _no_export()

    def private_bytes(self, *args: Any) -> bytes:
        _no_export()

    def __copy__(self) -> _TokenECPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TokenECPrivateKey:
        return self


class _TokenEd25519PrivateKey(ed25519.Ed25519PrivateKey):
    def __init__(
        self, public_key: ed25519.Ed25519PublicKey, scheme: SignatureScheme, sign: SignMessage
    ) -> None:
        self._public_key = public_key
        self.scheme = scheme
        self._sign = sign

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._sign(bytes(data))

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public_key

    def private_bytes(self, *args: Any) -> bytes:
        _no_export()

    def private_bytes_raw(self) -> bytes:
        _no_export()

    def __copy__(self) -> _TokenEd25519PrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TokenEd25519PrivateKey:
        return self


TokenPrivateKey = _TokenRSAPrivateKey | _TokenECPrivateKey | _TokenEd25519PrivateKey


def token_private_key(
    public_key: object, scheme: SignatureScheme, sign: SignMessage
) -> TokenPrivateKey:
    """The cryptography private key whose ``sign`` calls ``sign`` (the token).

    ``public_key`` is the token key's public half; ``scheme`` says which
    hash and padding the token signs with (see ``scheme_for_public_key``).
    """
    if isinstance(public_key, rsa.RSAPublicKey) and scheme.kind.startswith("rsa-"):
        return _TokenRSAPrivateKey(public_key, scheme, sign)
    if isinstance(public_key, ec.EllipticCurvePublicKey) and scheme.kind == "ecdsa":
        return _TokenECPrivateKey(public_key, scheme, sign)
    if isinstance(public_key, ed25519.Ed25519PublicKey) and scheme.kind == "eddsa":
        return _TokenEd25519PrivateKey(public_key, scheme, sign)
    raise TypeError(f"scheme {scheme.kind} does not fit a {type(public_key).__name__}")
