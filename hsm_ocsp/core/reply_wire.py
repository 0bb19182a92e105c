"""A Reply as bytes, for the link between the host's producer and its workers.

One frame: a fixed header (status, whether it came from a cache, produced and next
update as Unix seconds, -1 for none, the sizes that follow), then the CA's name, the
certificate statuses (one byte each), the etag and the response. Both ends are the
same program: a frame that does not add up is refused, never guessed at.
"""

from __future__ import annotations

import datetime as dt
import struct

from .model import CertStatus, OCSPResponseStatus
from .reply import UNSUCCESSFUL, Reply

__all__ = ["decode_reply", "encode_reply"]

_HEADER = struct.Struct("!BBqqHHH")  # status, cached, produced, next, ca, statuses, etag
_STATUSES = list(CertStatus)
_NONE = -1


def _seconds(when: dt.datetime | None) -> int:
    return _NONE if when is None else int(when.timestamp())


def _when(seconds: int) -> dt.datetime | None:
    return None if seconds == _NONE else dt.datetime.fromtimestamp(seconds, dt.UTC)


def encode_reply(reply: Reply) -> bytes:
    ca = (reply.ca or "").encode()
    etag = (reply.etag or "").encode()
    statuses = bytes(_STATUSES.index(s) for s in reply.cert_statuses)
    header = _HEADER.pack(
        reply.status,
        reply.cached,
        _seconds(reply.produced_at),
        _seconds(reply.next_update),
        len(ca),
        len(statuses),
        len(etag),
    )
    return b"".join((header, ca, statuses, etag, reply.body))


def decode_reply(data: bytes) -> Reply:
    """The Reply a frame carries; ValueError for bytes that are not one."""
    if len(data) < _HEADER.size:
        raise ValueError("reply frame too short")
    status, cached, produced, next_update, ca_size, count, etag_size = _HEADER.unpack_from(data)
    status = OCSPResponseStatus(status)
    if status is not OCSPResponseStatus.SUCCESSFUL:
        return UNSUCCESSFUL[status]  # the one shared object: handlers memo it
    at = _HEADER.size
    ca, at = data[at : at + ca_size].decode(), at + ca_size
    statuses = tuple(_STATUSES[i] for i in data[at : at + count])
    at += count
    etag, at = data[at : at + etag_size].decode(), at + etag_size
    if at >= len(data) or len(statuses) != count:
        raise ValueError("reply frame truncated")
    return Reply(
        body=data[at:],
        status=status,
        ca=ca or None,
        cert_statuses=statuses,
        produced_at=_when(produced),
        next_update=_when(next_update),
        etag=etag or None,
        cached=bool(cached),
    )
