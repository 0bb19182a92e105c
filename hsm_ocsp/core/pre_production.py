"""What the producer signs ahead of any client: the pure part.

For every serial of an index and every CertID hash algorithm a CA is configured with,
the producer keeps a current answer in the host's store. This module says which
CertID a client of that algorithm sends (OpenSSL's encoding: the algorithm with NULL
parameters, as NSS, Java, Go and OpenSSL clients send it), which serials an index
change touched, and why a stored record needs producing (missing, to refresh, or
signed by a certificate that no longer signs).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Iterator, Mapping

from . import der
from .index import IndexSnapshot
from .model import CertStatus
from .ocsp import HASH_ALGORITHMS, CertID
from .responder import Issuer
from .shared_answers import (
    NOT_IN_INDEX,
    decode,
    index_digest,
    keyable,
    parse_key,
    serial_prefix,
)

__all__ = [
    "Reason",
    "cert_id",
    "changed_serials",
    "due_keys",
    "index_agrees",
    "lifetime_of",
    "needs",
    "prefixes",
    "produced_ahead",
    "untrue_keys",
]

_OIDS = {name: dotted for dotted, name in HASH_ALGORITHMS.items()}
_MISSING = object()


class Reason(enum.Enum):
    """Why an answer was signed (the ``reason`` label of hsm_ocsp_signatures_total)."""

    CHANGE = "change"  # the index changed the serial's status
    REFRESH = "refresh"  # the stored answer is due for refresh (clock.refresh_time)
    FILL = "fill"  # no answer stored yet
    LIVE = "live"  # a client waited for it (a store miss, several CertIDs)
    NONCE = "nonce"  # signed for one client alone
    UNKNOWN = "unknown"  # a serial the index does not hold


def cert_id(issuer: Issuer, algorithm: str, serial: int) -> CertID:
    """The CertID a client sends for ``serial`` of ``issuer`` hashed with ``algorithm``."""
    name_hash, key_hash = issuer.name_hashes[algorithm], issuer.key_hashes[algorithm]
    encoded = der.sequence(
        der.sequence(der.oid(_OIDS[algorithm]), der.null()),
        der.octet_string(name_hash),
        der.octet_string(key_hash),
        der.integer(serial),
    )
    return CertID(algorithm, name_hash, key_hash, serial, encoded)


def produced_ahead(issuer: Issuer, one: CertID) -> bool:
    """Whether ``one`` is a CertID the store keeps answers for: a hash of the CA's
    ``cert_id_hashes`` in the encoding ``cert_id`` makes. Any other encoding of the same
    serial (another hash, parameters left out) is answered live, never stored: else a
    client could make the store, and every refresh, grow by one answer per encoding."""
    return (
        one.hash_algorithm in issuer.cert_id_hashes
        and keyable(one.serial_number)
        and cert_id(issuer, one.hash_algorithm, one.serial_number).der == one.der
    )


def changed_serials(old: IndexSnapshot | None, new: IndexSnapshot) -> list[int]:
    """Serials whose status differs between two versions of an index (new, changed or
    gone). Unchanged entries are shared between versions (index.py), so most compare
    by identity."""
    if old is None:
        return []
    if new.delta is not None and new.delta[0]() is old:  # read from its changes
        return list(new.delta[1])
    before, after = old.entries, new.entries
    changed = [s for s, v in after.items() if (b := before.get(s, _MISSING)) is not v and b != v]
    changed += [s for s in before if s not in after]
    return changed


def lifetime_of(
    validity: dt.timedelta, signer_not_after: dt.datetime, snapshot: IndexSnapshot | None
) -> tuple[float, float]:
    """What ``needs`` compares a record's nextUpdate with: the CA's validity (seconds) and
    the latest nextUpdate any answer may have now (Unix: the signer's notAfter, or the
    nextUpdate of the CRLs the status comes from, the sooner)."""
    until = signer_not_after
    if snapshot is not None and snapshot.valid_until is not None:
        until = min(until, snapshot.valid_until.replace(microsecond=0))
    return validity.total_seconds(), until.timestamp()


def needs(
    data: bytes | None,
    value: object,
    signer: bytes,
    now: dt.datetime,
    lifetime: tuple[float, float] | None = None,
) -> Reason | None:
    """Why the stored record ``data`` for a serial whose index entry is ``value`` must be
    produced now (None: it is current). ``signer`` is the fingerprint that signs now;
    ``lifetime``, the CA's validity in seconds and the signer's notAfter (Unix): a record
    of another validity (the configuration changed) is produced again."""
    record = None if data is None else decode(data)
    if record is None or record.truth != index_digest(value) or record.signer != signer:
        return Reason.FILL
    if lifetime is not None:
        expected = min(record.produced_at + lifetime[0], lifetime[1])
        if abs(record.next_update - expected) > 1:
            return Reason.FILL
    if record.refresh_at <= now.timestamp():
        return Reason.REFRESH
    return None


def prefixes(ca: str, serials: Iterable[int]) -> Iterator[bytes]:
    """The key prefixes of ``serials``: withdrawing them drops every CertID of each."""
    return (serial_prefix(ca, s) for s in serials)


def untrue_keys(
    items: Iterable[tuple[bytes, bytes]], snapshots: Mapping[str, IndexSnapshot | None]
) -> Iterator[bytes]:
    """Keys of records the indexes no longer say (or of no CA served, or unreadable)."""
    for key, value in items:
        parsed, record = parse_key(key), decode(value)
        snapshot = snapshots.get(parsed[0]) if parsed is not None else None
        if parsed is None or record is None or snapshot is None:
            yield key
            continue
        truth = snapshot.entries.get(parsed[1], _MISSING)
        if truth is _MISSING or record.truth != index_digest(truth):
            yield key


def index_agrees(key: bytes, value: bytes, snapshots: Mapping[str, IndexSnapshot | None]) -> bool:
    """Whether a record (another host's, its header checked against its signed body
    already) says what the index says: the same entry, and the status that entry gives
    (never a good answer for a serial the index says is revoked)."""
    if next(untrue_keys([(key, value)], snapshots), None) is not None:
        return False
    parsed, record = parse_key(key), decode(value)
    snapshot = snapshots.get(parsed[0]) if parsed is not None else None
    if parsed is None or record is None or snapshot is None:
        return False
    truth = snapshot.entries.get(parsed[1])
    return record.cert_status is (CertStatus.GOOD if truth is None else CertStatus.REVOKED)


def due_keys(
    items: Iterable[tuple[bytes, bytes]], now: float, until: float | None = None
) -> tuple[list[bytes], float, float, float]:
    """Keys of the records due for refresh at ``now``; the soonest nextUpdate of all, and
    the soonest refresh time of the rest (Unix seconds; inf for none). Answers for
    serials not in the index are not refreshed: the next client to ask has one signed.
    ``until``: the nextUpdate of the CRLs the status comes from; an answer that already
    reaches it is not signed again (it could not reach further) until a newer CRL.
    Last, the soonest nextUpdate of the records not due: the soonest once they are."""
    due, soonest, refresh_at, rest = [], float("inf"), float("inf"), float("inf")
    for key, value in items:
        record = decode(value)
        if record is None or record.truth == NOT_IN_INDEX:
            continue
        soonest = min(soonest, record.next_update)
        if record.refresh_at <= now and (until is None or record.next_update < until - 1):
            due.append(key)
            continue
        rest = min(rest, record.next_update)
        if until is None or record.next_update < until - 1:
            refresh_at = min(refresh_at, record.refresh_at)
    return due, soonest, refresh_at, rest
