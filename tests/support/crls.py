"""CRLs in the shapes CAs publish them, made with pyca/cryptography's builder: AD CS's
(a base and deltas, an issuing distribution point), EJBCA's (partitions, an indirect
CRL issuer), and the faults (another key, an older number, an expired CRL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclasses.dataclass
class Entry:
    serial: int
    when: dt.datetime = NOW - dt.timedelta(days=1)
    reason: x509.ReasonFlags | None = None
    invalidity: dt.datetime | None = None
    issuer: x509.Name | None = None  # certificateIssuer (an indirect CRL)


def make_crl(
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    entries: Iterable[Entry] = (),
    *,
    number: int | None = 1,
    this_update: dt.datetime | None = None,
    next_update: dt.timedelta | dt.datetime = dt.timedelta(days=1),
    delta_of: int | None = None,
    idp: x509.IssuingDistributionPoint | None = None,
    extra: Iterable[x509.Extension[x509.ExtensionType]] = (),
) -> bytes:
    """A DER CRL."""
    this = this_update or NOW - dt.timedelta(minutes=1)
    nxt = next_update if isinstance(next_update, dt.datetime) else this + next_update
    builder = x509.CertificateRevocationListBuilder().issuer_name(issuer)
    builder = builder.last_update(this).next_update(nxt)
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    if delta_of is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(delta_of), critical=True)
    if idp is not None:
        builder = builder.add_extension(idp, critical=True)
    for ext in extra:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    for entry in entries:
        revoked = x509.RevokedCertificateBuilder().serial_number(entry.serial)
        revoked = revoked.revocation_date(entry.when)
        if entry.issuer is not None:
            revoked = revoked.add_extension(
                x509.CertificateIssuer([x509.DirectoryName(entry.issuer)]), critical=True
            )
        if entry.reason is not None:
            revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
        if entry.invalidity is not None:
            revoked = revoked.add_extension(x509.InvalidityDate(entry.invalidity), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def idp(url: str, *, indirect: bool = False) -> x509.IssuingDistributionPoint:
    """An issuing distribution point naming ``url`` (AD CS's and EJBCA's partitions)."""
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=indirect,
        only_contains_attribute_certs=False,
    )


def delegate_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    directory: Path,
    *,
    crl_sign: bool = True,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """A CRL issuer the CA certifies (keyUsage cRLSign), as EJBCA's external CRL signer."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CRL Issuer")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, False, crl_sign, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    path = directory / "crl-issuer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path
