"""Answers shared between processes, as the service sees them: a StoredAnswer under a
key, in a store it is handed (the LMDB file of the host in production).

An answer is taken from the store only if it still says what the index says and was
signed by the certificate that signs now: each record carries a digest of the index
entry it was signed for, and the fingerprint of its signer. So a revocation withdraws
a stored ``good`` in every process at once, whatever the store holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import Protocol

from .model import CertStatus, OCSPResponseStatus
from .reply import Reply
from .responder import SigningCertificate

__all__ = ["SharedAnswers", "StoredAnswer", "index_digest", "signer_fingerprint"]


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
    """Where answers are shared; a failure to read or write is never the caller's."""

    def get(self, key: bytes) -> StoredAnswer | None: ...

    def put(self, key: bytes, answer: StoredAnswer) -> None: ...


def index_digest(value: object) -> bytes:
    """A short digest of what the index says of a serial (None: good, or a Revocation)."""
    return hashlib.sha256(repr(value).encode()).digest()[:8]


def signer_fingerprint(signer: SigningCertificate) -> bytes:
    """Which certificate (and token key) signed: answers of a replaced one are not served."""
    material = signer.key.encode() + b"\0" + (signer.der or signer.responder_key_hash)
    return hashlib.sha256(material).digest()[:8]


def shared_key(ca: str, cert_id: bytes) -> bytes:
    return ca.encode() + b"\0" + cert_id


def load(
    store: SharedAnswers, ca: str, cert_id: bytes, value: object, signer: SigningCertificate,
    now: dt.datetime,
) -> tuple[Reply, dt.datetime] | None:  # fmt: skip
    """A stored answer for one CertID and its refresh time, if it may be served now: it
    says what the index says (``value``), ``signer`` signed it, it is before nextUpdate."""
    record = store.get(shared_key(ca, cert_id))
    if record is None or now.timestamp() >= record.next_update:
        return None
    if record.truth != index_digest(value) or record.signer != signer_fingerprint(signer):
        return None
    return record.reply(ca), dt.datetime.fromtimestamp(record.refresh_at, dt.UTC)


def save(
    store: SharedAnswers, reply: Reply, cert_id: bytes, value: object,
    signer: SigningCertificate, refresh_at: dt.datetime,
) -> None:  # fmt: skip
    """Share an answer for one CertID of a serial the index holds (``value``)."""
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
    store.put(shared_key(reply.ca, cert_id), record)
