"""Answers shared between processes, as the service sees them: a StoredAnswer under a
key, in a store it is handed (the LMDB file of the host in production).

An answer is taken from the store only if it was signed by the certificate that
signs now and is before its nextUpdate. The process that holds the index (the
producer) also checks that it still says what the index says: each record carries a
digest of the index entry it was signed for. Processes without the index (workers)
rely on the producer withdrawing a serial's records when the index changes it:
keys begin with the CA and the serial, so every CertID of a serial (SHA-1, SHA-256,
any encoding a client sent) goes in one range delete.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import struct
from collections.abc import Callable, Iterable
from typing import Protocol

from .index import IndexSnapshot
from .model import CertStatus, OCSPResponseStatus
from .ocsp import CertID
from .reply import Reply
from .responder import SigningCertificate

__all__ = [
    "MISSING",
    "NOT_IN_INDEX",
    "SharedAnswers",
    "Sharer",
    "StoredAnswer",
    "cert_id_of",
    "decode",
    "encode",
    "index_digest",
    "index_says",
    "keyable",
    "of_unknown",
    "parse_key",
    "serial_prefix",
    "shared_key",
    "signer_fingerprint",
]

_HEADER = struct.Struct("!qqq8s8sBH")  # produced, next, refresh, signer, truth, status, etag
_TRUTH = slice(32, 40)  # where the truth is in a record
_STATUSES = list(CertStatus)
MISSING = object()  # what the index says of a serial it does not hold
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z
NOT_IN_INDEX = b"unknown\0"  # the truth of an answer for such a serial


@dataclasses.dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A signed answer for one CertID, and what it may be served for."""

    body: bytes
    cert_status: CertStatus
    produced_at: int  # Unix seconds
    next_update: int
    refresh_at: int
    signer: bytes  # signer_fingerprint() of the certificate that signed it
    truth: bytes  # index_digest() of the index entry it was signed for
    etag: str

    def reply(self, ca: str) -> Reply:
        return Reply(
            body=self.body,
            status=OCSPResponseStatus.SUCCESSFUL,
            ca=ca,
            cert_statuses=(self.cert_status,),
            produced_at=dt.datetime.fromtimestamp(self.produced_at, dt.UTC),
            next_update=dt.datetime.fromtimestamp(self.next_update, dt.UTC),
            etag=self.etag,
            cached=True,
        )


class SharedAnswers(Protocol):
    """Where answers are shared, as bytes; a failure to read or write is never the
    caller's (a get that fails is None, a put that fails is dropped)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, still_true: Callable[[], bool] | None = None) -> bool:
        """Store ``value`` unless ``still_true`` (asked under the store's lock, so no
        withdrawal can pass between the question and the write) says no; whether it did."""

    def withdraw(self, prefixes: Iterable[bytes]) -> int:
        """Delete every record whose key begins with one of ``prefixes``; how many."""

    def forget(self, keys: Iterable[bytes]) -> int:
        """Delete these records from this host's store only (never from a fleet)."""

    def generation(self) -> int:
        """Changes whenever records are withdrawn: what was read before may be kept
        while it stays the same."""


def encode(answer: StoredAnswer) -> bytes:
    etag = answer.etag.encode()
    header = _HEADER.pack(
        answer.produced_at,
        answer.next_update,
        answer.refresh_at,
        answer.signer,
        answer.truth,
        _STATUSES.index(answer.cert_status),
        len(etag),
    )
    return header + etag + answer.body


def decode(data: bytes) -> StoredAnswer | None:
    """The answer, or None for bytes that are not one (another version's, say)."""
    if len(data) < _HEADER.size:
        return None
    produced, next_update, refresh, signer, truth, status, etag_length = _HEADER.unpack_from(data)
    start = _HEADER.size + etag_length
    if status >= len(_STATUSES) or len(data) <= start:
        return None
    if not all(0 <= t < _LAST_SECOND for t in (produced, next_update, refresh)):
        return None  # no datetime holds it: damage, or bytes that are no record
    try:
        etag = data[_HEADER.size : start].decode("ascii")
    except UnicodeDecodeError:
        return None
    return StoredAnswer(
        body=data[start:],
        cert_status=_STATUSES[status],
        produced_at=produced,
        next_update=next_update,
        refresh_at=refresh,
        signer=signer,
        truth=truth,
        etag=etag,
    )


def index_says(snapshot: IndexSnapshot | None, serial: int, value: object) -> bool:
    """Whether the index says now what an answer was signed for: an answer whose
    signature took so long that the index changed meanwhile is not shared."""
    return snapshot is not None and snapshot.entries.get(serial, MISSING) == value


def index_digest(value: object) -> bytes:
    """A short digest of what the index says of a serial (None: good, a Revocation, or
    MISSING: not in the index)."""
    if value is MISSING:
        return NOT_IN_INDEX
    return hashlib.sha256(repr(value).encode()).digest()[:8]


def of_unknown(data: bytes) -> bool:
    """Whether a record is an answer for a serial not in the index."""
    return data[_TRUTH] == NOT_IN_INDEX


def signer_fingerprint(signer: SigningCertificate) -> bytes:
    """Which certificate (and token key) signed: answers of a replaced one are not served."""
    material = signer.key.encode() + b"\0" + (signer.der or signer.responder_key_hash)
    return hashlib.sha256(material).digest()[:8]


MAX_SERIAL_OCTETS = 255  # the key's length byte


def keyable(serial: int) -> bool:
    """Whether a serial has a key in the store: a client may send any INTEGER (negative,
    hundreds of octets long); such a serial is in no index, and its answer (unknown) is
    signed for the client alone, never stored."""
    return serial >= 0 and serial.bit_length() <= 8 * MAX_SERIAL_OCTETS


def serial_prefix(ca: str, serial: int) -> bytes:
    """The start of every key of one serial of one CA: name, NUL, length, serial.
    ValueError for a serial that has no key (see ``keyable``)."""
    if not keyable(serial):
        raise ValueError(f"serial {serial} has no key in the store")
    number = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ca.encode() + b"\0" + bytes((len(number),)) + number


def shared_key(ca: str, cert_id: CertID) -> bytes:
    return serial_prefix(ca, cert_id.serial_number) + cert_id.der


def parse_key(key: bytes) -> tuple[str, int] | None:
    """(CA name, serial) of a key; None for a key of another layout."""
    ca, nul, rest = key.partition(b"\0")
    if not nul or not rest or len(rest) < 1 + rest[0]:
        return None
    try:
        return ca.decode(), int.from_bytes(rest[1 : 1 + rest[0]], "big")
    except UnicodeDecodeError:
        return None


def cert_id_of(key: bytes) -> bytes:
    """The CertID DER a key ends with (b"" for a key of another layout)."""
    nul = key.find(b"\0")
    if nul < 0 or nul + 1 >= len(key):
        return b""
    return key[nul + 2 + key[nul + 1] :]


def load(
    store: SharedAnswers,
    ca: str,
    cert_id: CertID,
    value: object,
    signer: SigningCertificate,
    now: dt.datetime,
) -> tuple[Reply, dt.datetime] | None:
    """A stored answer for one CertID and its refresh time, if it may be served now: it
    says what the index says (``value``), ``signer`` signed it, it is before nextUpdate."""
    data = store.get(shared_key(ca, cert_id))
    record = None if data is None else decode(data)
    if record is None or now.timestamp() >= record.next_update:
        return None
    if record.truth != index_digest(value) or record.signer != signer_fingerprint(signer):
        return None
    return record.reply(ca), dt.datetime.fromtimestamp(record.refresh_at, dt.UTC)


class Sharer:
    """Writes answers to the store for every worker of the host. Answers for serials
    not in the index are kept too, but at most ``max_unknown`` of them, the oldest
    forgotten first: a client can ask for any number of such serials."""

    def __init__(self, store: SharedAnswers, max_unknown: int) -> None:
        self.store = store
        self.max_unknown = max_unknown
        self._unknown: dict[bytes, None] = {}  # their keys, oldest first

    def save(
        self,
        reply: Reply,
        cert_id: CertID,
        value: object,
        signer: SigningCertificate,
        refresh_at: dt.datetime,
        still_true: Callable[[], bool] | None = None,
    ) -> None:
        """Share an answer for one CertID whose serial the index says ``value`` of
        (MISSING: not there), if ``still_true()`` at the moment of writing."""
        assert reply.ca is not None and reply.produced_at is not None
        assert reply.next_update is not None and reply.etag is not None
        record = StoredAnswer(
            body=reply.body,
            cert_status=reply.cert_statuses[0],
            produced_at=int(reply.produced_at.timestamp()),
            next_update=int(reply.next_update.timestamp()),
            refresh_at=int(refresh_at.timestamp()),
            signer=signer_fingerprint(signer),
            truth=index_digest(value),
            etag=reply.etag,
        )
        if not keyable(cert_id.serial_number):
            return
        key = shared_key(reply.ca, cert_id)
        if not self.store.put(key, encode(record), still_true) or value is not MISSING:
            return
        self._unknown.pop(key, None)
        self._unknown[key] = None
        if len(self._unknown) > self.max_unknown:
            oldest = next(iter(self._unknown))
            del self._unknown[oldest]
            self.store.forget([oldest])
