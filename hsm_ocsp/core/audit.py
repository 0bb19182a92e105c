"""The audit trail of signatures, pure: one JSON line per signature the token is asked
to make, each carrying the SHA-256 of the line before it, so that a line changed,
removed or put out of order, or a file of the trail missing, is found
(``hsm-ocsp audit verify``).

A line: ``{"time", "ca", "key", "reason", "this_update", "next_update", "certs":
[[serial hex, CertID hash, status], ...], "signed_sha256", "prev"}``; ``prev`` is the
SHA-256 (hex) of the previous line's text, without its newline, and ``"-"`` for the
first line of a trail.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

__all__ = ["FIELDS", "FIRST", "Audit", "digest", "line", "verify"]


class Audit(Protocol):
    """Where the lines go (store/audit_log.py); ``required``: a line that cannot be
    written stops its signature."""

    required: bool

    def write(self, fields: Mapping[str, object]) -> bool: ...


FIRST = "-"
FIELDS = (
    "time",
    "ca",
    "key",
    "reason",
    "this_update",
    "next_update",
    "certs",
    "signed_sha256",
    "prev",
)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def line(fields: Mapping[str, object], prev: str) -> str:
    """The line (no newline) for ``fields``, chained to the line whose digest is ``prev``."""
    return json.dumps({**fields, "prev": prev}, separators=(",", ":"), sort_keys=True)


def verify(files: Iterable[tuple[str, Iterable[str]]]) -> Iterator[str]:
    """What is wrong with a trail given as (name, lines) per file, oldest first: one
    sentence per fault, naming the file and the line."""
    prev: str | None = None  # the digest the next line must carry (None: any, at start)
    last = ""
    for name, lines in files:
        for number, text in enumerate(lines, 1):
            text = text.rstrip("\n")
            where = f"{name}:{number}"
            try:
                record = json.loads(text)
            except ValueError:
                yield f"{where}: not a line of the trail (changed?)"
                prev = digest(text)
                continue
            if not isinstance(record, dict) or set(record) != set(FIELDS):
                yield f"{where}: not a line of the trail (fields changed?)"
            elif prev is not None and record["prev"] != prev:
                before = f"{name}:{number - 1}" if number > 1 else f"the last line of {last}"
                missing = "" if number > 1 else ", or a file of the trail is missing"
                yield (
                    f"{where}: does not follow {before}: one of them was changed, or a "
                    f"line between them removed, or they were moved{missing}"
                )
            prev = digest(text)
        last = name
