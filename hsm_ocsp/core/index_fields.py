"""The fields of one index.txt record: times as openssl ca writes them, and the
revocation field (time, reason, hold instruction or compromise time)."""

from __future__ import annotations

import datetime as dt
import re

from .model import Revocation, RevocationReason

_UTC = dt.UTC


_REASONS = {
    "unspecified": RevocationReason.UNSPECIFIED,
    "keycompromise": RevocationReason.KEY_COMPROMISE,
    "cacompromise": RevocationReason.CA_COMPROMISE,
    "affiliationchanged": RevocationReason.AFFILIATION_CHANGED,
    "superseded": RevocationReason.SUPERSEDED,
    "cessationofoperation": RevocationReason.CESSATION_OF_OPERATION,
    "certificatehold": RevocationReason.CERTIFICATE_HOLD,
    "removefromcrl": RevocationReason.REMOVE_FROM_CRL,
}


_HOLD_INSTRUCTIONS = {
    "holdinstructionnone": "1.2.840.10040.2.1",
    "holdinstructioncallissuer": "1.2.840.10040.2.2",
    "holdinstructionreject": "1.2.840.10040.2.3",
}


_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


_TIME = re.compile(r"(\d{12}|\d{14})Z")


def parse_time(text: str) -> dt.datetime:
    """UTCTime ``YYMMDDHHMMSSZ`` or GeneralizedTime ``YYYYMMDDHHMMSSZ``."""
    if not _TIME.fullmatch(text):
        raise ValueError(f"{text!r} is not YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ")
    if len(text) == 13:
        year = int(text[:2])
        year += 2000 if year < 50 else 1900  # RFC 5280 4.1.2.5.1
        rest = text[2:]
    else:
        year = int(text[:4])
        rest = text[4:]
    return dt.datetime(
        year,
        int(rest[0:2]),
        int(rest[2:4]),
        int(rest[4:6]),
        int(rest[6:8]),
        int(rest[8:10]),
        tzinfo=_UTC,
    )


def parse_revocation(field: str) -> Revocation:
    """``revtime[,reason[,extra]]`` as ``openssl ca`` writes it."""
    parts = field.split(",")
    if len(parts) > 3:
        raise ValueError(f"revocation field {field!r} has more than three parts")
    revocation_time = parse_time(parts[0])
    if len(parts) == 1:
        return Revocation(revocation_time)
    name = parts[1].lower()
    extra = parts[2] if len(parts) == 3 else None
    if name in ("holdinstruction", "keytime", "cakeytime"):
        if extra is None:
            needs = "an instruction" if name == "holdinstruction" else "a time"
            raise ValueError(f"{parts[1]} needs {needs}")
        return _with_extra(revocation_time, name, extra)
    if name not in _REASONS:
        raise ValueError(f"unknown revocation reason {parts[1]!r}")
    if extra is not None:
        raise ValueError(f"reason {parts[1]} takes no third part")
    return Revocation(revocation_time, _REASONS[name])


def _with_extra(revocation_time: dt.datetime, name: str, extra: str) -> Revocation:
    """A hold with its instruction, or a key compromise with the time of it."""
    if name == "holdinstruction":
        oid = _HOLD_INSTRUCTIONS.get(extra.lower(), extra)
        if not _OID.fullmatch(oid):
            raise ValueError(f"unknown hold instruction {extra!r}")
        return Revocation(revocation_time, RevocationReason.CERTIFICATE_HOLD, None, oid)
    reason = (
        RevocationReason.KEY_COMPROMISE if name == "keytime" else RevocationReason.CA_COMPROMISE
    )
    return Revocation(revocation_time, reason, parse_time(extra))


def split_escaped(line: str) -> list[str]:
    fields, current, i = [], [], 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == "\t":
            current.append("\t")
            i += 2
            continue
        if ch == "\t":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    fields.append("".join(current))
    return fields
