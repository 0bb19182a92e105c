"""The OpenSSL CA database (``index.txt``) as an immutable status snapshot.

Format (as ``openssl ca`` writes it): one record a line, six TAB-separated fields: status
(V/R/E), expiry, revocation info, serial (hex), file name, subject. A
backslash before a TAB keeps the TAB inside a field. Like OpenSSL we refuse
the whole file when one line is wrong, so that a half-written or damaged file
never replaces a good snapshot.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import BinaryIO

from .errors import IndexFormatError
from .index_fields import parse_revocation, split_escaped
from .model import Revocation

__all__ = ["IndexSnapshot", "parse_index", "parse_index_stream"]

# Whole lines as ``openssl ca`` writes them, for the fast path (see parse_index_stream).
_EXPIRY_RE = (
    rb"(?:\d\d)?\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:[01]\d|2[0-3])[0-5]\d[0-5]\dZ"
)
# No line is longer than MAX_LINE: the fast pattern's fields are bounded too, so
# a longer line goes to the careful parser, which names it.
MAX_LINE = 64 * 1024
DEFAULT_MAX_BYTES = 1 << 30  # ca.max_index_bytes: a million-line index is ~100 MB
_FIELD = rb"[^\t\n\\\x00]{0,%d}" % MAX_LINE
_TAIL = rb"\t" + _FIELD + rb"\t" + _FIELD + rb"$"
# One pass finds every well-formed record: (serial, "", "") for V or E and
# ("", revocation, serial) for R.
_FAST_RECORD = re.compile(
    rb"^(?:[VE]\t" + _EXPIRY_RE + rb"\t\t([0-9A-Fa-f]{1,256})"
    rb"|R\t" + _EXPIRY_RE + rb"\t([^\t\n\\\x00]{1,256})\t([0-9A-Fa-f]{1,256}))" + _TAIL,
    re.M,
)
_COMMENT = re.compile(rb"^#[^\n\x00]{0,%d}$" % MAX_LINE, re.M)
_BLOCK = 1 << 22
_HEX = re.compile(rb"[0-9A-Fa-f]+")
# The expiry is checked, not kept (status does not depend on it); a bytes
# pattern keeps a million-line load fast while still refusing bad dates.
_EXPIRY = re.compile(
    rb"(\d\d)?\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])([01]\d|2[0-3])[0-5]\d[0-5]\dZ"
)


@dataclasses.dataclass(frozen=True, eq=False)
class IndexSnapshot:
    """Status of every serial in one version of the index.

    ``entries`` maps the serial (an int) to None for an issued, unrevoked
    certificate (V or E) and to its Revocation for R. A serial that is not a
    key was never issued by this CA as far as the index knows.
    """

    entries: Mapping[int, Revocation | None]
    counts: Mapping[str, int]
    # Read from its changes (index_delta.py): the snapshot before, weakly, and the
    # serials whose status differs from it.
    delta: tuple[weakref.ref[IndexSnapshot], tuple[int, ...]] | None = None
    # A status read from CRLs is true until the soonest of their nextUpdates: no answer
    # may claim more (None: an index, true until it changes).
    valid_until: dt.datetime | None = None

    def __contains__(self, serial: int) -> bool:
        return serial in self.entries

    def listed(self, serial: int) -> bool:
        """Whether the source lists the serial. A CA answering the serials its CRLs do not
        list good (core/crl.py AllIssued) has them in ``entries`` but does not list them:
        their answers are signed and kept within the bounds of unknown serials', so that
        a flood of made-up serials neither crowds the issued ones' line nor fills the store."""
        entries = self.entries
        return (
            dict.__contains__(entries, serial) if isinstance(entries, dict) else serial in entries
        )

    def __len__(self) -> int:
        return len(self.entries)


def parse_index(data: bytes, path: object = "index.txt") -> IndexSnapshot:
    """Parse a whole index file; IndexFormatError names the line and the fault."""
    return parse_index_stream(io.BytesIO(data), path)


def parse_index_stream(
    stream: BinaryIO, path: object = "index.txt", base: IndexSnapshot | None = None
) -> IndexSnapshot:
    """Parse an index from a seekable binary stream (an open file), block by block.

    A block whose every line matches what ``openssl ca`` writes is taken at C
    speed by one regular expression; any other block goes through the careful
    line parser, which finds and names the bad line. The file is never held
    whole, so a million-line index costs little more than its entries.

    ``base`` is the snapshot in service. A new version of the same index is then
    read into a table that shares the serials (and unchanged revocations) of
    ``base``, so that while both are held (a reload) the new one costs its hash
    table and its changes, not a second copy of every entry. The result is the
    same as without ``base``.
    """
    start = stream.tell()
    if base is not None and isinstance(base.entries, dict) and base.entries:
        try:
            return _reread(stream, path, base.entries)
        except _NotFast:
            stream.seek(start)
    try:
        return _parse_stream(stream, path, fast=True)
    except _SerialTwice:
        stream.seek(start)  # let the careful parser name the line
        return _parse_stream(stream, path, fast=False)


class _SerialTwice(Exception):
    pass


class _NotFast(Exception):
    """Re-reading from a base needs every line well formed and every serial once."""


_UNSEEN = object()


def _line_blocks(stream: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """Blocks of whole lines, each with the start of the line cut at its end."""
    rest = b""
    while chunk := stream.read(_BLOCK):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        block, rest = data[:cut], data[cut:]
        yield block, rest


def _reread(stream: BinaryIO, path: object, old: dict[int, Revocation | None]) -> IndexSnapshot:
    # The old serials, each marked unseen, in a table of their own: the int
    # objects are shared with ``old``; a key keeps its object when updated.
    entries: dict[int, object] = dict.fromkeys(old, _UNSEEN)
    counts = {b"V": 0, b"R": 0, b"E": 0}
    records = 0
    rest = b""
    for block, rest in _line_blocks(stream):
        if len(rest) > MAX_LINE:
            raise _NotFast  # the careful parser names the line
        if block:
            records += _reread_block(block, old, entries, counts)
    if rest:
        raise _NotFast
    unseen = list(entries.values()).count(_UNSEEN)
    if records != len(entries) - unseen:  # a serial appears twice: name it
        raise _NotFast
    if unseen:  # serials no longer in the file
        for serial in [k for k, v in entries.items() if v is _UNSEEN]:
            del entries[serial]
    return IndexSnapshot(
        entries=entries,  # type: ignore[arg-type]  # no _UNSEEN is left
        counts=MappingProxyType({k.decode(): v for k, v in counts.items()}),
    )


def _reread_block(
    block: bytes,
    old: dict[int, Revocation | None],
    entries: dict[int, object],
    counts: dict[bytes, int],
) -> int:
    read = _read_block(block, counts)
    if read is None:
        raise _NotFast
    good, revoked = read
    same = dict.fromkeys(good)
    if len(same) != len(good):
        raise _NotFast
    entries.update(same)
    get = old.get
    for serial, revocation in revoked:
        before = get(serial)
        entries[serial] = before if before == revocation else revocation
    return len(good) + len(revoked)


def _parse_stream(stream: BinaryIO, path: object, *, fast: bool) -> IndexSnapshot:
    entries: dict[int, Revocation | None] = {}
    counts = {b"V": 0, b"R": 0, b"E": 0}
    line_no = 0
    rest = b""
    for block, rest in _line_blocks(stream):
        if block and not (fast and _take_block(block, entries, counts)):
            _parse_lines(io.BytesIO(block), path, entries, counts, line_no)
        line_no += block.count(b"\n")
        if len(rest) > MAX_LINE:  # never gather an endless line in memory
            raise IndexFormatError(path, line_no + 1, f"line longer than {MAX_LINE} bytes")
    if rest:  # a last line without its newline: a file caught halfway through a write
        _parse_lines([rest], path, entries, counts, line_no)
    return IndexSnapshot(
        entries=entries, counts=MappingProxyType({k.decode(): v for k, v in counts.items()})
    )


def _read_block(
    block: bytes, counts: dict[bytes, int]
) -> tuple[list[int], list[tuple[int, Revocation]]] | None:
    """The V/E serials and R entries of a block of whole lines, counted in ``counts``.

    None, counting nothing, unless every line is as ``openssl ca`` writes it.
    """
    records = _FAST_RECORD.findall(block)
    if len(records) + len(_COMMENT.findall(block)) != block.count(b"\n"):
        return None
    try:
        good = [int(g, 16) for g, _, _ in records if g]
        revoked = [(int(s, 16), parse_revocation(r.decode("ascii"))) for _, r, s in records if r]
    except (ValueError, UnicodeDecodeError):
        return None
    expired = block.count(b"\nE\t") + block.startswith(b"E\t")
    counts[b"E"] += expired
    counts[b"V"] += len(good) - expired
    counts[b"R"] += len(revoked)
    return good, revoked


def _take_block(
    block: bytes, entries: dict[int, Revocation | None], counts: dict[bytes, int]
) -> bool:
    """Add a block of whole lines if every one is well formed; else add nothing."""
    read = _read_block(block, counts)
    if read is None:
        return False
    good, revoked = read
    before = len(entries)
    entries.update(dict.fromkeys(good))
    entries.update(revoked)
    if len(entries) != before + len(good) + len(revoked):
        raise _SerialTwice
    return True


def _parse_lines(
    lines: Iterable[bytes],
    path: object,
    entries: dict[int, Revocation | None],
    counts: dict[bytes, int],
    first: int,
) -> None:
    """The careful parser: line by line, naming the first bad line."""
    for number, raw in enumerate(lines, first + 1):
        if _checked_line(raw, path, number):
            continue  # a comment
        fields = _fields(raw, path, number)
        serial_hex = fields[3]
        if _HEX.fullmatch(serial_hex) is None:
            raise IndexFormatError(path, number, f"serial {serial_hex!r} is not hexadecimal")
        serial = int(serial_hex, 16)
        if serial in entries:
            raise IndexFormatError(path, number, f"serial {serial_hex.decode()} appears twice")
        try:
            entries[serial] = _status(fields[0], fields[1], fields[2])
        except (ValueError, UnicodeDecodeError) as exc:
            raise IndexFormatError(path, number, str(exc)) from None
        counts[fields[0]] += 1


def _checked_line(raw: bytes, path: object, number: int) -> bool:
    """IndexFormatError for a line no field can be read from; True for a comment."""
    if len(raw) > MAX_LINE:
        raise IndexFormatError(path, number, f"line longer than {MAX_LINE} bytes")
    if raw[-1:] != b"\n":
        raise IndexFormatError(path, number, "last line does not end in a newline (truncated?)")
    if b"\0" in raw:
        raise IndexFormatError(path, number, "NUL byte: this is not a text index")
    return raw[:1] == b"#"


def _fields(raw: bytes, path: object, number: int) -> list[bytes]:
    """The six fields of a record (a backslash before a TAB keeps it in its field)."""
    fields = raw.split(b"\t")  # the newline stays in the subject, which is not kept
    if len(fields) == 6 and b"\\" not in raw:
        return fields
    if raw == b"\n":
        raise IndexFormatError(path, number, "empty line")
    try:
        text = raw[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise IndexFormatError(path, number, "not UTF-8 text") from None
    fields = [f.encode() for f in split_escaped(text)]
    if len(fields) != 6:
        raise IndexFormatError(path, number, f"{len(fields)} TAB-separated fields, 6 expected")
    return fields


def _status(status: bytes, expiry: bytes, revinfo: bytes) -> Revocation | None:
    """What the index says of a serial: None (good) or its revocation; ValueError if
    the fields do not say it right."""
    if _EXPIRY.fullmatch(expiry) is None:
        raise ValueError(f"expiry {expiry!r} is not YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ")
    if status == b"R":
        return parse_revocation(revinfo.decode("ascii"))
    if status not in (b"V", b"E"):
        raise ValueError(f"status {status!r} is not V, R or E")
    if revinfo:
        raise ValueError(f"status {status.decode()} with a revocation field")
    return None
