"""The entries of a CRL read straight from its DER, fast: a million in about a second.

The CRL's signature, issuer and extensions are read by pyca/cryptography (crl.py);
this walks ``revokedCertificates`` of the signed TBSCertList. An entry is a serial, a
revocation date and, maybe, its extensions: the date and the extensions repeat across
entries (a CA revokes in batches, with few reasons), so each distinct pair is read once
(asn1crypto) and one Revocation object is shared by every entry that has it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from asn1crypto import core as asn1
from asn1crypto import crl as asn1_crl

from .model import Revocation, RevocationReason

__all__ = ["EntryFacts", "EntryFault", "read_entries"]

# The reasons as asn1crypto names them.
_REASONS = {
    "unspecified": RevocationReason.UNSPECIFIED,
    "key_compromise": RevocationReason.KEY_COMPROMISE,
    "ca_compromise": RevocationReason.CA_COMPROMISE,
    "affiliation_changed": RevocationReason.AFFILIATION_CHANGED,
    "superseded": RevocationReason.SUPERSEDED,
    "cessation_of_operation": RevocationReason.CESSATION_OF_OPERATION,
    "certificate_hold": RevocationReason.CERTIFICATE_HOLD,
    "remove_from_crl": RevocationReason.REMOVE_FROM_CRL,
    "privilege_withdrawn": RevocationReason.PRIVILEGE_WITHDRAWN,
    "aa_compromise": RevocationReason.AA_COMPROMISE,
}


class EntryFault(ValueError):
    """The entries cannot be read (the message says why)."""


# What one entry's extensions say: its Revocation (its date filled in later), and the
# DER of the certificate issuer it names (an indirect CRL), if it names one.
EntryFacts = tuple[RevocationReason | None, dt.datetime | None, str | None, bytes | None]


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the TLV at ``at``."""
    try:
        tag = data[at]
        first = data[at + 1]
    except IndexError:
        raise EntryFault("truncated") from None
    if first < 0x80:
        start, length = at + 2, first
    else:
        count = first & 0x7F
        if not 0 < count <= 4:
            raise EntryFault("bad length")
        start = at + 2 + count
        length = int.from_bytes(data[at + 2 : start], "big")
    end = start + length
    if end > len(data):
        raise EntryFault("truncated")
    return tag, start, end


def _revoked_list(tbs: bytes) -> tuple[int, int] | None:
    """Where revokedCertificates lies in a TBSCertList (None: no entries)."""
    tag, at, end = _tlv(tbs, 0)
    if tag != 0x30:
        raise EntryFault("TBSCertList is not a SEQUENCE")
    tag, start, stop = _tlv(tbs, at)
    if tag == 0x02:  # version
        at = stop
    for _ in range(3):  # signature, issuer, thisUpdate
        at = _tlv(tbs, at)[2]
    while at < end:
        tag, start, stop = _tlv(tbs, at)
        if tag in (0x17, 0x18):  # nextUpdate
            at = stop
            continue
        return (start, stop) if tag == 0x30 else None
    return None


def _content(data: bytes, at: int) -> tuple[int, int]:
    """Where the content of the TLV at ``at`` starts and stops (short lengths inline)."""
    n = data[at + 1]
    if n < 0x80:
        return at + 2, at + 2 + n
    if n == 0x81:
        return at + 3, at + 3 + data[at + 2]
    if n == 0x82:
        return at + 4, at + 4 + (data[at + 2] << 8 | data[at + 3])
    _, start, stop = _tlv(data, at)
    return start, stop


def raw_entries(tbs: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(serial, revocationDate TLV, crlEntryExtensions TLV or b"") of each entry. The
    lengths an entry has (under 64 KiB, a serial under 128 bytes) are read inline; any
    other goes through ``_tlv``."""
    where = _revoked_list(tbs)
    if where is None:
        return
    at, end = where
    data = tbs
    from_bytes = int.from_bytes
    while at < end:
        if data[at] != 0x30:
            raise EntryFault("an entry is not a SEQUENCE")
        start, stop = _content(data, at)
        if stop > end or data[start] != 0x02 or data[start + 1] >= 0x80:
            raise EntryFault("an entry's serial is not a short INTEGER")
        s1 = start + 2 + data[start + 1]
        d1 = s1 + 2 + data[s1 + 1]
        if data[s1] not in (0x17, 0x18) or d1 > stop:
            raise EntryFault("an entry's revocationDate is not a Time")
        yield from_bytes(data[start + 2 : s1], "big", signed=True), data[s1:d1], data[d1:stop]
        at = stop


def _date(tlv: bytes) -> dt.datetime:
    kind = asn1.UTCTime if tlv[0] == 0x17 else asn1.GeneralizedTime
    try:
        when = kind.load(tlv).native
    except ValueError as exc:
        raise EntryFault(f"bad revocationDate: {exc}") from None
    return when.astimezone(dt.UTC)  # type: ignore[no-any-return]


def _extensions(tlv: bytes) -> EntryFacts:
    reason = invalidity = hold = issuer = None
    try:
        extensions = asn1_crl.CRLEntryExtensions.load(tlv)
        for ext in extensions:
            name = ext["extn_id"].native
            value = ext["extn_value"].parsed
            if name == "crl_reason":
                reason = _REASONS[value.native]
            elif name == "invalidity_date":
                invalidity = value.native.astimezone(dt.UTC)
            elif name == "hold_instruction_code":
                hold = value.dotted
            elif name == "certificate_issuer":
                names = [n.chosen.untag().dump() for n in value if n.name == "directory_name"]
                issuer = names[0] if names else b""
            elif ext["critical"].native:
                raise EntryFault(f"unknown critical entry extension {ext['extn_id'].dotted}")
    except (ValueError, KeyError, TypeError) as exc:
        raise EntryFault(f"bad entry extensions: {exc}") from None
    return reason, invalidity, hold, issuer


def read_entries(
    tbs: bytes, only_for: bytes | None, crl_issuer: bytes, *, delta: bool
) -> dict[int, Revocation | None]:
    """serial -> Revocation (None in a delta: removed by removeFromCRL). ``only_for``:
    the DER name of the CA whose entries an indirect CRL's are (each entry's certificate
    issuer is the last one named, at first the CRL's issuer: RFC 5280 5.3.3)."""
    entries: dict[int, Revocation | None] = {}
    dates: dict[bytes, dt.datetime] = {}
    facts: dict[bytes, EntryFacts] = {}
    shared: dict[tuple[bytes, bytes], Revocation | None] = {}
    current = crl_issuer
    for serial, date, exts in raw_entries(tbs):
        said = facts.get(exts)
        if said is None:
            said = facts[exts] = _extensions(exts) if exts else (None, None, None, None)
        if only_for is not None:
            if said[3] is not None:
                current = said[3]
            if current != only_for:
                continue
        revocation = shared.get((date, exts), _NONE)
        if revocation is _NONE:  # worked out once for each (date, extensions) met
            revocation = shared[date, exts] = _revocation(date, said, dates)
        if revocation is None:
            if delta:
                entries[serial] = None
            continue  # removeFromCRL in a full CRL says nothing
        entries[serial] = revocation
    return entries


def _revocation(
    date: bytes, said: EntryFacts, dates: dict[bytes, dt.datetime]
) -> Revocation | None:
    """The revocation an entry of this date and these facts says; None for
    removeFromCRL. ``dates``: each date read once."""
    when = dates.get(date) or dates.setdefault(date, _date(date))
    reason, invalidity, hold, _ = said
    if reason is RevocationReason.REMOVE_FROM_CRL:
        return None
    hold = hold if reason is RevocationReason.CERTIFICATE_HOLD else None
    return Revocation(when, reason, invalidity, hold)


_NONE: Revocation | None = Revocation(dt.datetime(1, 1, 1, tzinfo=dt.UTC))  # a marker
