"""A CRL read and judged: taken only if it deserves trust (RFC 5280 5 and 6.3).

``read_crl`` parses one CRL (DER or PEM), checks who signed it and what it covers, and
gives its facts: number, thisUpdate, nextUpdate, delta base, and each entry as the
Revocation the rest of the package knows. ``CrlRefused`` names the reason a CRL is
not taken; the source keeps the last good one.

``combine`` makes one status snapshot of a CA from its CRLs in service (a full CRL, or
the partitions of one, and the deltas on them) and the serials it issued, if it can say.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from .crl_entries import EntryFault, read_entries
from .index import IndexSnapshot
from .model import Revocation, RevocationReason

__all__ = [
    "AllIssued",
    "CrlFacts",
    "CrlRefused",
    "combine",
    "later_than",
    "read_crl",
]

# A thisUpdate this far ahead of our clock is a publisher's clock, not a forgery.
CLOCK_SKEW = dt.timedelta(minutes=5)
_HOLD_INSTRUCTION = "2.5.29.23"
_CRL_REASON_NAMES = {
    x509.ReasonFlags.unspecified: RevocationReason.UNSPECIFIED,
    x509.ReasonFlags.key_compromise: RevocationReason.KEY_COMPROMISE,
    x509.ReasonFlags.ca_compromise: RevocationReason.CA_COMPROMISE,
    x509.ReasonFlags.affiliation_changed: RevocationReason.AFFILIATION_CHANGED,
    x509.ReasonFlags.superseded: RevocationReason.SUPERSEDED,
    x509.ReasonFlags.cessation_of_operation: RevocationReason.CESSATION_OF_OPERATION,
    x509.ReasonFlags.certificate_hold: RevocationReason.CERTIFICATE_HOLD,
    x509.ReasonFlags.remove_from_crl: RevocationReason.REMOVE_FROM_CRL,
    x509.ReasonFlags.privilege_withdrawn: RevocationReason.PRIVILEGE_WITHDRAWN,
    x509.ReasonFlags.aa_compromise: RevocationReason.AA_COMPROMISE,
}
_KNOWN_CRL_EXTENSIONS = {
    ExtensionOID.CRL_NUMBER,
    ExtensionOID.DELTA_CRL_INDICATOR,
    ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    ExtensionOID.FRESHEST_CRL,
}


class CrlRefused(Exception):
    """A CRL not taken; the message is the reason, for one log line and a metric label."""

    def __init__(self, reason: str, label: str) -> None:
        super().__init__(reason)
        self.label = label  # bounded: signature, issuer, number, time, expired, format


class AllIssued(dict[int, Revocation | None]):
    """Entries of a CA whose operator said every serial a CRL does not list is good
    (``not_on_crl = "good"``): any serial is in, good unless listed."""

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, int)

    def __missing__(self, serial: int) -> None:
        return None

    def get(self, serial: int, default: object = None) -> Revocation | None:
        return dict.get(self, serial) if isinstance(serial, int) else default


@dataclasses.dataclass(frozen=True, eq=False)
class CrlFacts:
    """One CRL that deserved trust."""

    number: int | None
    this_update: dt.datetime
    next_update: dt.datetime | None
    base_number: int | None  # a delta CRL's: the full CRL it completes
    scope: bytes  # the issuing distribution point, DER (b"": none): a partition's name
    # serial -> its revocation; in a delta, None: removed (removeFromCRL, a hold released)
    entries: Mapping[int, Revocation | None]
    size: int  # bytes

    @property
    def delta(self) -> bool:
        return self.base_number is not None


def later_than(new: CrlFacts, old: CrlFacts) -> str | None:
    """Why ``new`` may not replace ``old`` from the same place (None: it may)."""
    if new.scope != old.scope:
        return "its issuing distribution point differs from the CRL in service"
    if new.number is not None and old.number is not None:
        if new.number < old.number:
            return f"CRL number {new.number} is lower than {old.number}, in service"
        if new.number == old.number and new.this_update != old.this_update:
            return f"CRL number {new.number} is in service with another thisUpdate"
    if new.this_update < old.this_update:
        return f"thisUpdate {new.this_update:%Y-%m-%d %H:%M:%S}Z is older than the CRL in service"
    return None


def read_crl(
    data: bytes,
    ca: x509.Certificate,
    now: dt.datetime,
    delegate: x509.Certificate | None = None,
) -> CrlFacts:
    """The facts of a CRL of ``ca`` (signed by it, or by ``delegate``, a CRL issuer it
    certified with cRLSign, in an indirect CRL); CrlRefused says why not."""
    try:
        crl = _load(data)
        extensions = crl.extensions
    except ValueError as exc:
        raise CrlRefused(f"not a CRL: {exc}", "format") from None
    indirect = _signed(crl, ca, delegate)
    for ext in extensions:
        if ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
            raise CrlRefused(f"unknown critical extension {ext.oid.dotted_string}", "format")
    this_update, next_update = _in_time(crl, now)
    scope = _scope(extensions, indirect)
    base = _value(extensions, x509.DeltaCRLIndicator)
    number = _value(extensions, x509.CRLNumber)
    try:
        entries = read_entries(
            crl.tbs_certlist_bytes,
            ca.subject.public_bytes() if indirect else None,
            crl.issuer.public_bytes(),
            delta=base is not None,
        )
    except (EntryFault, IndexError) as exc:
        raise CrlRefused(f"its entries cannot be read: {exc or 'truncated'}", "format") from None
    return CrlFacts(
        number=None if number is None else number.crl_number,
        this_update=this_update,
        next_update=next_update,
        base_number=None if base is None else base.crl_number,
        scope=scope,
        entries=entries,
        size=len(data),
    )


def _signed(
    crl: x509.CertificateRevocationList, ca: x509.Certificate, delegate: x509.Certificate | None
) -> bool:
    """Whether ``crl`` is an indirect CRL, once its signature verified (with the CA's key
    or its delegate's): CrlRefused if it does not."""
    signer, indirect = _signer(crl, ca, delegate)
    if not _verifies(crl, signer):
        who = signer.subject.rfc4514_string()
        raise CrlRefused(f"its signature does not verify with the key of {who}", "signature")
    return indirect


def _in_time(
    crl: x509.CertificateRevocationList, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime | None]:
    """thisUpdate and nextUpdate, if ``now`` is between them (with CLOCK_SKEW)."""
    this_update = crl.last_update_utc
    if this_update > now + CLOCK_SKEW:
        raise CrlRefused(f"thisUpdate {this_update:%Y-%m-%d %H:%M:%S}Z is in the future", "time")
    next_update = crl.next_update_utc
    if next_update is not None and next_update <= now:
        raise CrlRefused(f"past its nextUpdate {next_update:%Y-%m-%d %H:%M:%S}Z", "expired")
    return this_update, next_update


def _load(data: bytes) -> x509.CertificateRevocationList:
    """DER, PEM, or bare base64 of the DER (what ``cfssl gencrl`` prints)."""
    head = data.lstrip()[:5]
    if head == b"-----":
        return x509.load_pem_x509_crl(data)
    if data[:1] != b"\x30" and head[:3] == b"MII":
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"neither DER nor PEM nor base64 ({exc})") from None
    return x509.load_der_x509_crl(data)


def _signer(
    crl: x509.CertificateRevocationList, ca: x509.Certificate, delegate: x509.Certificate | None
) -> tuple[x509.Certificate, bool]:
    """Whose key must have signed the CRL, and whether it is indirect (for another CA)."""
    if crl.issuer == ca.subject:
        return ca, False
    if delegate is not None and crl.issuer == delegate.subject:
        return delegate, True
    raise CrlRefused(
        f"issued by {crl.issuer.rfc4514_string()}, not by the CA "
        f"{ca.subject.rfc4514_string()} (nor by its crl_issuer)",
        "issuer",
    )


def _verifies(crl: x509.CertificateRevocationList, signer: x509.Certificate) -> bool:
    key = signer.public_key()
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | dsa.DSAPublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return False
    try:
        return crl.is_signature_valid(key)
    except (InvalidSignature, ValueError, TypeError):
        return False


_T = TypeVar("_T", bound=x509.ExtensionType)


def _value(extensions: x509.Extensions, kind: type[_T]) -> _T | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _scope(extensions: x509.Extensions, indirect: bool) -> bytes:
    """The issuing distribution point (RFC 5280 5.2.5), refused where it says the CRL
    does not cover every certificate of the CA for every reason."""
    try:
        ext = extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    except x509.ExtensionNotFound:
        if indirect:
            raise CrlRefused("signed by the crl_issuer but not an indirect CRL", "issuer") from None
        return b""
    idp = ext.value
    if idp.only_some_reasons is not None:
        raise CrlRefused("it covers only some reasons (onlySomeReasons)", "scope")
    if idp.only_contains_attribute_certs:
        raise CrlRefused("it covers attribute certificates only", "scope")
    if indirect and not idp.indirect_crl:
        raise CrlRefused("signed by the crl_issuer but not an indirect CRL", "issuer")
    return idp.public_bytes()


@dataclasses.dataclass(frozen=True)
class Combined:
    snapshot: IndexSnapshot
    valid_until: dt.datetime | None  # the soonest nextUpdate of the CRLs used
    unused_deltas: tuple[str, ...]  # why a delta in hand was not applied


def combine(
    fulls: Sequence[CrlFacts],
    deltas: Sequence[CrlFacts],
    issued: Iterable[int] | None,
) -> Combined:
    """One CA's status from its full CRLs (partitions are joined), each completed by the
    delta whose base it reaches; ``issued``: the serials the CA issued (a serial in none
    of them is unknown), or None: every serial not listed is good."""
    listed: dict[int, Revocation | None] = {}
    valid = [f.next_update for f in fulls]
    unused = []
    for full in fulls:
        listed.update(full.entries)
    for delta in deltas:
        base = next((f for f in fulls if f.scope == delta.scope), None)
        why = _delta_fits(delta, base)
        if why is not None:
            unused.append(why)
            continue
        valid.append(delta.next_update)
        for serial, revocation in delta.entries.items():
            if revocation is None:
                listed.pop(serial, None)
            else:
                listed[serial] = revocation
    revoked = {s: r for s, r in listed.items() if r is not None}
    entries, good = _entries(revoked, issued)
    counts = MappingProxyType({"V": good, "R": len(revoked), "E": 0})
    soonest = min((v for v in valid if v is not None), default=None)
    snapshot = IndexSnapshot(entries=entries, counts=counts, valid_until=soonest)
    return Combined(snapshot, soonest, tuple(unused))


def _entries(
    revoked: dict[int, Revocation], issued: Iterable[int] | None
) -> tuple[dict[int, Revocation | None], int]:
    """Every serial's status, and how many are good: those issued and not revoked (with
    no list of issued serials, every serial not listed is good: AllIssued)."""
    if issued is None:
        return AllIssued(revoked), 0
    entries: dict[int, Revocation | None] = dict.fromkeys(issued)
    good = len(entries) - sum(1 for serial in revoked if serial in entries)
    entries.update(revoked)
    return entries, good


def _delta_fits(delta: CrlFacts, base: CrlFacts | None) -> str | None:
    if base is None:
        return "a delta CRL with no full CRL of its scope"
    if base.number is None or delta.number is None or delta.base_number is None:
        return "a delta CRL, or its full CRL, without a CRL number"
    if delta.number <= base.number:
        return f"delta CRL {delta.number} is not newer than CRL {base.number}"
    if delta.base_number > base.number:
        return (
            f"delta CRL {delta.number} needs CRL {delta.base_number}, {base.number} is in service"
        )
    return None
