"""The status rules: which CA a CertID names, and what to answer for it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .index import IndexSnapshot
from .model import NON_ISSUED, CertStatus
from .ocsp import CertID, SingleResponse

__all__ = [
    "Issuer",
    "SigningCertificate",
    "key_hash",
    "key_names",
    "select_issuer",
    "single_responses",
]

_HASHES = ("sha1", "sha256", "sha384", "sha512")
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


def key_hash(certificate: x509.Certificate, algorithm: str = "sha1") -> bytes:
    """Hash of the subjectPublicKey BIT STRING value (RFC 6960 4.1.1, 4.2.1)."""
    bits = asn1_keys.PublicKeyInfo.load(spki(certificate))["public_key"].contents[1:]
    return hashlib.new(algorithm, bits).digest()


def spki(certificate: x509.Certificate) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate: which key it vouches for."""
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_names(ca_name: str, certificates: Sequence[x509.Certificate]) -> dict[bytes, str]:
    """The name of the token key of each public key (SPKI) among a CA's signing
    certificates: the CA's name and the key's fingerprint, so that a name never
    stands for two keys (a call on its way during a reload signs with the key its
    certificate vouches for)."""
    return {
        key: f"{ca_name}/{hashlib.sha256(key).hexdigest()[:12]}"
        for key in dict.fromkeys(spki(c) for c in certificates)
    }


@dataclasses.dataclass(frozen=True)
class SigningCertificate:
    """A certificate that may sign a CA's answers, when, and with which token key."""

    der: bytes | None  # put into each answer; None when the CA itself signs
    not_before: dt.datetime
    not_after: dt.datetime
    key: str  # the token key's name
    responder_key_hash: bytes  # responderID byKey: SHA-1 of its public key

    @classmethod
    def of(cls, cert: x509.Certificate, *, delegated: bool, key: str) -> SigningCertificate:
        """``delegated``: the certificate goes into each answer (a delegated responder's,
        or the CA's own when the CA signs and its certificate is to be included)."""
        der = cert.public_bytes(serialization.Encoding.DER) if delegated else None
        return cls(
            der, cert.not_valid_before_utc, cert.not_valid_after_utc, key, key_hash(cert, "sha1")
        )


@dataclasses.dataclass(frozen=True)
class Issuer:
    """A CA as the protocol sees it: how its CertIDs look and who signs for it."""

    name: str
    name_hashes: Mapping[str, bytes]
    key_hashes: Mapping[str, bytes]
    responder_key_hash: bytes
    validity: dt.timedelta
    unknown_as_revoked: bool = False
    # Every certificate that may sign, of one key or several; the one that signs an
    # answer is the valid one with the latest notBefore, so a next certificate
    # installed ahead (of the same key or a new one) takes over by itself at its
    # notBefore. None valid: no answer is signed. Empty: the CA's key, always.
    signers: tuple[SigningCertificate, ...] = ()
    # The CertID hash algorithms whose answers are produced ahead and kept in the store
    # (in the encoding pre_production.cert_id makes); any other is answered live.
    cert_id_hashes: tuple[str, ...] = ("sha1", "sha256")

    def __post_init__(self) -> None:
        if not self.signers:
            always = SigningCertificate(
                None, _EARLIEST, _LATEST, self.name, self.responder_key_hash
            )
            object.__setattr__(self, "signers", (always,))

    def signer_at(self, when: dt.datetime) -> SigningCertificate | None:
        valid = [s for s in self.signers if s.not_before <= when < s.not_after]
        return max(valid, key=lambda s: s.not_before) if valid else None

    def signer_valid_at(self, when: dt.datetime) -> bool:
        return self.signer_at(when) is not None

    @classmethod
    def from_certificates(
        cls,
        name: str,
        ca_certificate: x509.Certificate,
        responder_certificates: x509.Certificate | Sequence[x509.Certificate] | None,
        validity: dt.timedelta,
        *,
        unknown_as_revoked: bool = False,
        cert_id_hashes: tuple[str, ...] = ("sha1", "sha256"),
        include_ca_certificate: bool = False,
    ) -> Issuer:
        """``responder_certificates``: the delegated responder's (of one key or several),
        or None when the CA signs its own answers; then ``include_ca_certificate`` puts
        the CA's certificate into each answer (clients that look for the signer only among
        the answer's certificates, such as FreeRADIUS, need it)."""
        if isinstance(responder_certificates, x509.Certificate):
            responder_certificates = [responder_certificates]
        delegated = list(responder_certificates or ())
        subject = ca_certificate.subject.public_bytes()
        signing = delegated or [ca_certificate]
        names = key_names(name, signing)
        return cls(
            name=name,
            name_hashes={h: hashlib.new(h, subject).digest() for h in _HASHES},
            key_hashes={h: key_hash(ca_certificate, h) for h in _HASHES},
            responder_key_hash=key_hash(signing[0], "sha1"),
            validity=validity,
            unknown_as_revoked=unknown_as_revoked,
            cert_id_hashes=cert_id_hashes,
            signers=tuple(
                SigningCertificate.of(
                    c, delegated=bool(delegated) or include_ca_certificate, key=names[spki(c)]
                )
                for c in signing
            ),
        )

    def matches(self, cert_id: CertID) -> bool:
        algorithm = cert_id.hash_algorithm
        return (
            algorithm is not None
            and self.key_hashes[algorithm] == cert_id.issuer_key_hash
            and self.name_hashes[algorithm] == cert_id.issuer_name_hash
        )


def select_issuer(
    issuers: Sequence[Issuer], cert_ids: Sequence[CertID], ca_name: str | None = None
) -> Issuer | None:
    """The issuer that signs the answer: the first one any CertID names.

    With ``ca_name`` (the ``/{ca}/`` URL) only that CA is considered. None
    means no CertID names a CA served here: the answer is ``unauthorized``.
    """
    for cert_id in cert_ids:
        for issuer in issuers:
            if (ca_name is None or issuer.name == ca_name) and issuer.matches(cert_id):
                return issuer
    return None


def single_responses(
    issuer: Issuer, snapshot: IndexSnapshot, cert_ids: Sequence[CertID]
) -> tuple[SingleResponse, ...]:
    """One SingleResponse per CertID, in order (RFC 6960 4.2.1).

    A CertID of another issuer is ``unknown`` (RFC 6960 2.2); a serial the
    index lacks is ``unknown``, or "revoked" per RFC 6960 2.2 when the CA is
    configured so; never ``good``.
    """
    entries = snapshot.entries
    out = []
    for cert_id in cert_ids:
        if not issuer.matches(cert_id):
            out.append(SingleResponse(cert_id, CertStatus.UNKNOWN))
            continue
        serial = cert_id.serial_number
        if serial not in entries:
            if issuer.unknown_as_revoked:
                out.append(SingleResponse(cert_id, CertStatus.REVOKED, NON_ISSUED))
            else:
                out.append(SingleResponse(cert_id, CertStatus.UNKNOWN))
            continue
        revocation = entries[serial]
        if revocation is None:
            out.append(SingleResponse(cert_id, CertStatus.GOOD))
        else:
            out.append(SingleResponse(cert_id, CertStatus.REVOKED, revocation))
    return tuple(out)
