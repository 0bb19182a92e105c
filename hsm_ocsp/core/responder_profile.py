"""What a delegated OCSP responder certificate must look like (RFC 6960 4.2.2.2, CA/B BR 7.1.2.8).

Pure: certificates in, findings out. ``check`` reports every finding; ``serve``
refuses to start on the ones that make every answer fail validation (not issued
by the CA, no OCSPSigning EKU).
"""

from __future__ import annotations

import dataclasses
import enum

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["Level", "ProfileFinding", "blocking", "profile_findings"]

_NOCHECK_OID = "1.3.6.1.5.5.7.48.1.5"
_NULL = b"\x05\x00"


class Level(enum.StrEnum):
    """How much a finding of ``check`` matters."""

    OK = "ok"
    NOTE = "note"  # worth knowing, nothing to fix
    WARNING = "warning"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class ProfileFinding:
    level: Level
    message: str
    blocks_serving: bool = False  # every answer would fail validation


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> ProfileFinding:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        reason = str(exc) or type(exc).__name__
        return ProfileFinding(Level.ERROR, f"is not issued by the CA ({reason})", True)
    return ProfileFinding(Level.OK, "is issued by the CA")


def _eku(cert: x509.Certificate) -> ProfileFinding:
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return ProfileFinding(Level.ERROR, "lacks EKU OCSPSigning (RFC 6960 4.2.2.2)", True)
    if len(usages) > 1:
        return ProfileFinding(
            Level.WARNING, "has EKUs besides OCSPSigning (BR 7.1.2.8: OCSPSigning only)"
        )
    return ProfileFinding(Level.OK, "has EKU OCSPSigning")


def _nocheck(cert: x509.Certificate) -> ProfileFinding:
    tbs = asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))["tbs_certificate"]
    for extension in tbs["extensions"] or ():
        if extension["extn_id"].dotted != _NOCHECK_OID:
            continue
        if extension["critical"].native:
            return ProfileFinding(Level.WARNING, "marks id-pkix-ocsp-nocheck critical (BR: not)")
        if extension["extn_value"].contents != _NULL:
            return ProfileFinding(
                Level.WARNING, "has an id-pkix-ocsp-nocheck value that is not NULL"
            )
        return ProfileFinding(Level.OK, "has id-pkix-ocsp-nocheck")
    return ProfileFinding(Level.ERROR, "lacks id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1)")


def _key_usage(cert: x509.Certificate) -> ProfileFinding:
    try:
        extension = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return ProfileFinding(Level.WARNING, "has no keyUsage (BR: critical, digitalSignature)")
    if not extension.value.digital_signature:
        return ProfileFinding(Level.ERROR, "keyUsage lacks digitalSignature")
    if not extension.critical:
        return ProfileFinding(Level.WARNING, "keyUsage is not critical (BR 7.1.2.8)")
    return ProfileFinding(Level.OK, "keyUsage is critical digitalSignature")


def _not_a_ca(cert: x509.Certificate) -> ProfileFinding:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        return ProfileFinding(Level.ERROR, "is a CA certificate (basicConstraints CA:TRUE)")
    return ProfileFinding(Level.OK, "is not a CA")


def _authority_key_id(cert: x509.Certificate) -> ProfileFinding:
    try:
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return ProfileFinding(Level.WARNING, "has no authority key identifier (BR 7.1.2.8)")
    return ProfileFinding(Level.OK, "has an authority key identifier")


def profile_findings(cert: x509.Certificate, ca: x509.Certificate) -> list[ProfileFinding]:
    """Every rule of the responder certificate profile, one finding each."""
    return [
        _issued_by(cert, ca),
        _eku(cert),
        _nocheck(cert),
        _key_usage(cert),
        _not_a_ca(cert),
        _authority_key_id(cert),
    ]


def blocking(cert: x509.Certificate, ca: x509.Certificate) -> list[str]:
    """What makes every answer signed with ``cert`` fail validation."""
    return [f.message for f in profile_findings(cert, ca) if f.blocks_serving]
