"""A private key on the token, in the shape cryptography's builders accept.

``CertificateSigningRequestBuilder.sign`` (and the certificate, CRL and OCSP
builders) check ``isinstance`` against cryptography's private-key classes and
then call ``key.sign(...)`` (checked with cryptography 48 to 50). So a
subclass whose ``sign`` asks the token is enough to sign on the token. The
key never leaves it: ``private_bytes`` and friends refuse.

How the signature is made is injected as ``sign_message(message) -> signature``
bound to one :class:`~hsm_ocsp.core.signing.SignatureScheme`: either
:func:`session_signer` (an open session on the caller's thread, as the CLI
does) or ``lambda m: token.sign_blocking(name, m)`` (the Token's own thread).
``sign`` refuses a hash or padding other than the scheme's, so the signature
always matches the algorithm the builder writes into the structure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NoReturn, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ..core.signing import SchemeKind, SignatureScheme
from .mechanisms import mechanism_for

__all__ = ["TokenPrivateKey", "session_signer", "token_private_key"]

SignMessage = Callable[[bytes], bytes]
P = TypeVar("P")


def session_signer(private_key: Any, scheme: SignatureScheme) -> SignMessage:
    """Sign with a python-pkcs11 private-key object on the calling thread."""
    mechanism, param = mechanism_for(scheme)

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


class _TokenKey(Generic[P]):
    """What every token key shares: its public half, its scheme, no export."""

    def __init__(self, public_key: P, scheme: SignatureScheme, sign: SignMessage) -> None:
        self._public_key = public_key
        self.scheme = scheme
        self._sign = sign

    def public_key(self) -> P:
        return self._public_key

    def private_bytes(self, *args: Any) -> bytes:
        _no_export()

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


class _TokenRSAPrivateKey(_TokenKey[rsa.RSAPublicKey], rsa.RSAPrivateKey):
    def sign(
        self,
        data: bytes | bytearray | memoryview,
        padding: padding.AsymmetricPadding,
        algorithm: object,  # Prehashed | HashAlgorithm (| NoDigestInfo from cryptography 48)
    ) -> bytes:
        wanted = SchemeKind.RSA_PSS if padding.name == "EMSA-PSS" else SchemeKind.RSA_PKCS1
        if wanted != self.scheme.kind:
            raise ValueError(f"this token key signs with {self.scheme.kind}, not {wanted}")
        _check_hash(self.scheme, algorithm)
        return self._sign(bytes(data))

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise TypeError("the token key is for signing only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _no_export()


class _TokenECPrivateKey(_TokenKey[ec.EllipticCurvePublicKey], ec.EllipticCurvePrivateKey):
    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("the token key signs with ECDSA only")
        _check_hash(self.scheme, signature_algorithm.algorithm)
        return self._sign(bytes(data))

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


class _TokenEd25519PrivateKey(_TokenKey[ed25519.Ed25519PublicKey], ed25519.Ed25519PrivateKey):
    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._sign(bytes(data))

    def private_bytes_raw(self) -> bytes:
        _no_export()


TokenPrivateKey = _TokenRSAPrivateKey | _TokenECPrivateKey | _TokenEd25519PrivateKey


def token_private_key(
    public_key: object, scheme: SignatureScheme, sign: SignMessage
) -> TokenPrivateKey:
    """The cryptography private key whose ``sign`` calls ``sign`` (the token).

    ``public_key`` is the token key's public half; ``scheme`` says which
    hash and padding the token signs with (see ``scheme_for_public_key``).
    """
    if isinstance(public_key, rsa.RSAPublicKey) and scheme.kind in (
        SchemeKind.RSA_PKCS1,
        SchemeKind.RSA_PSS,
    ):
        return _TokenRSAPrivateKey(public_key, scheme, sign)
    if isinstance(public_key, ec.EllipticCurvePublicKey) and scheme.kind is SchemeKind.ECDSA:
        return _TokenECPrivateKey(public_key, scheme, sign)
    if isinstance(public_key, ed25519.Ed25519PublicKey) and scheme.kind is SchemeKind.EDDSA:
        return _TokenEd25519PrivateKey(public_key, scheme, sign)
    raise TypeError(f"scheme {scheme.kind} does not fit a {type(public_key).__name__}")
