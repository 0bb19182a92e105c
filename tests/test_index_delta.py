"""A new index version read from its changed lines must equal a full read."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from hsm_ocsp.core.errors import IndexFormatError
from hsm_ocsp.core.index import parse_index
from hsm_ocsp.core.index_delta import changed_span, reread_changed
from hsm_ocsp.core.pre_production import changed_serials
from hsm_ocsp.server.index_source import IndexSource

from .support.pki import generated_index_lines


def _text(lines: list[str]) -> bytes:
    return "".join(x + "\n" for x in lines).encode()


def _revoked(line: str, reason: str = "keyCompromise") -> str:
    fields = line.split("\t")
    return "\t".join(["R", fields[1], f"261127120000Z,{reason}", *fields[3:]])


def _edit(rng: random.Random, lines: list[str]) -> list[str]:
    """One change as a CA makes it: revoke, append, hold released, a line gone..."""
    new = list(lines)
    i = rng.randrange(len(new))
    what = rng.choice(["revoke", "append", "release", "drop", "two", "first", "last"])
    if what == "revoke":
        new[i] = _revoked(new[i])
    elif what == "append":
        new += generated_index_lines(rng.randint(1, 3))
    elif what == "release":  # a hold released: R back to V
        fields = new[i].split("\t")
        new[i] = "\t".join(["V", fields[1], "", *fields[3:]])
    elif what == "drop":
        del new[i]
    elif what == "two":  # two changes a few lines apart
        new[i] = _revoked(new[i], "superseded")
        j = max(0, i - 40)
        new[j] = _revoked(new[j], "cessationOfOperation")
    elif what == "first":
        new[0] = _revoked(new[0])
    else:
        new[-1] = _revoked(new[-1], "affiliationChanged")
    return new


def test_every_kind_of_change_reads_as_a_full_read_does() -> None:
    rng = random.Random(14)
    lines = generated_index_lines(3000)
    old = _text(lines)
    base = parse_index(old)
    for _ in range(60):
        edited = _edit(rng, lines)
        new = _text(edited)
        got = reread_changed(old, new, base)
        want = parse_index(new)
        assert got is not None
        assert dict(got.entries) == dict(want.entries)
        assert dict(got.counts) == dict(want.counts)
        assert sorted(changed_serials(base, got)) == sorted(
            changed_serials(base, want)
        )  # the delta's own list, and the full comparison
        lines, old, base = edited, new, got


def test_only_the_changed_lines_are_read() -> None:
    lines = generated_index_lines(1000)
    new = list(lines)
    new[500] = _revoked(new[500])
    old_text, new_text = _text(lines), _text(new)
    start, old_end, new_end = changed_span(old_text, new_text)
    assert old_text[start:old_end].decode() == lines[500] + "\n"
    assert new_text[start:new_end].decode() == new[500] + "\n"
    assert changed_span(old_text, old_text) == (len(old_text),) * 3


def test_unusual_changes_are_left_to_a_full_read() -> None:
    lines = generated_index_lines(1000)
    old = _text(lines)
    base = parse_index(old)
    twice = list(lines)
    twice[10] = twice[900]  # a serial twice: the full read names the line
    assert reread_changed(old, _text(twice), base) is None
    with pytest.raises(IndexFormatError, match="appears twice"):
        parse_index(_text(twice))
    broken = list(lines)
    broken[300] = "X\tnonsense"
    assert reread_changed(old, _text(broken), base) is None
    assert reread_changed(old, _text(generated_index_lines(1000)), base) is None  # all new
    other = parse_index(_text(generated_index_lines(1000)))  # not the old file's snapshot
    assert reread_changed(old, _text(_edit(random.Random(1), lines)), other) is None


def test_a_source_reads_a_renamed_file_from_its_changes_and_an_in_place_one_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.txt"
    lines = generated_index_lines(2000)
    path.write_bytes(_text(lines))
    source = IndexSource("root", path)
    first = source.load()
    assert first.delta is None  # nothing to compare with
    lines[7] = _revoked(lines[7])
    (tmp_path / "index.txt.new").write_bytes(_text(lines))
    os.replace(tmp_path / "index.txt.new", path)  # as openssl ca does
    assert source.check()
    second = source.snapshot
    assert second is not None and second.delta is not None
    assert dict(second.entries) == dict(parse_index(_text(lines)).entries)
    assert changed_serials(first, second) == [int(lines[7].split("\t")[3], 16)]
    lines[8] = _revoked(lines[8])
    with path.open("r+b") as file:  # the same inode rewritten: its old text is gone
        file.write(_text(lines))
    source.check()  # an in-place change is read once it settles
    assert source.check()
    third = source.snapshot
    assert third is not None and third.delta is None
    assert dict(third.entries) == dict(parse_index(_text(lines)).entries)
    lines[9] = "garbage"
    (tmp_path / "index.txt.new").write_bytes(_text(lines))
    os.replace(tmp_path / "index.txt.new", path)
    assert not source.check()  # the bad line is named and the last good index kept
    assert source.last_error is not None and ":10" in source.last_error
    assert source.snapshot is third
    source.close()
