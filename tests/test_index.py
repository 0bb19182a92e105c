"""The OpenSSL index format, every form `openssl ca` writes (as `openssl ca` 3.0 writes them)."""

from __future__ import annotations

import datetime as dt

import pytest

from hsm_ocsp.core.errors import IndexFormatError
from hsm_ocsp.core.index import IndexSnapshot, parse_index
from hsm_ocsp.core.index_fields import parse_time
from hsm_ocsp.core.model import RevocationReason

UTC = dt.UTC


def line(status: str, revinfo: str, serial: str, subject: str = "/CN=x") -> str:
    return f"{status}\t301231235959Z\t{revinfo}\t{serial}\tunknown\t{subject}\n"


def test_valid_and_expired_rows_are_not_revoked() -> None:
    snap = parse_index((line("V", "", "01") + line("E", "", "02")).encode())
    assert snap.entries == {1: None, 2: None}
    assert dict(snap.counts) == {"V": 1, "R": 0, "E": 1}


def test_plain_revocation_has_time_and_no_reason() -> None:
    snap = parse_index(line("R", "261124011953Z", "03").encode())
    rev = snap.entries[3]
    assert rev is not None
    assert rev.revocation_time == dt.datetime(2026, 11, 24, 1, 19, 53, tzinfo=UTC)
    assert rev.reason is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("unspecified", RevocationReason.UNSPECIFIED),
        ("keyCompromise", RevocationReason.KEY_COMPROMISE),
        ("CACompromise", RevocationReason.CA_COMPROMISE),
        ("affiliationChanged", RevocationReason.AFFILIATION_CHANGED),
        ("superseded", RevocationReason.SUPERSEDED),
        ("cessationOfOperation", RevocationReason.CESSATION_OF_OPERATION),
        ("certificateHold", RevocationReason.CERTIFICATE_HOLD),
        ("removeFromCRL", RevocationReason.REMOVE_FROM_CRL),
        ("KEYCOMPROMISE", RevocationReason.KEY_COMPROMISE),
    ],
)
def test_each_reason_is_read_without_regard_to_case(text: str, reason: RevocationReason) -> None:
    rev = parse_index(line("R", f"261124011953Z,{text}", "0A").encode()).entries[10]
    assert rev is not None and rev.reason is reason


def test_hold_instruction_by_name_and_by_oid() -> None:
    data = line("R", "261124011953Z,holdInstruction,holdInstructionReject", "01") + line(
        "R", "261124011953Z,holdInstruction,1.2.840.10040.2.2", "02"
    )
    snap = parse_index(data.encode())
    first, second = snap.entries[1], snap.entries[2]
    assert first is not None and second is not None
    assert first.reason is RevocationReason.CERTIFICATE_HOLD
    assert first.hold_instruction == "1.2.840.10040.2.3"
    assert second.hold_instruction == "1.2.840.10040.2.2"


def test_key_time_and_ca_key_time_carry_an_invalidity_date() -> None:
    data = line("R", "261124011953Z,keyTime,20260101120000Z", "01") + line(
        "R", "261124011953Z,CAkeyTime,20251231000000Z", "02"
    )
    snap = parse_index(data.encode())
    key, ca = snap.entries[1], snap.entries[2]
    assert key is not None and ca is not None
    assert key.reason is RevocationReason.KEY_COMPROMISE
    assert key.invalidity_date == dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert ca.reason is RevocationReason.CA_COMPROMISE
    assert ca.invalidity_date == dt.datetime(2025, 12, 31, tzinfo=UTC)


def test_serials_match_as_integers_whatever_case_and_leading_zeros() -> None:
    snap = parse_index((line("V", "", "00ab") + line("V", "", "0Cd3")).encode())
    assert 0xAB in snap and 0xCD3 in snap
    assert len(snap) == 2


def test_utc_and_generalized_expiry_both_accepted() -> None:
    data = "V\t491231235959Z\t\t01\tunknown\t/CN=a\nV\t20501231235959Z\t\t02\tunknown\t/CN=b\n"
    assert len(parse_index(data.encode())) == 2


def test_utctime_years_follow_rfc5280_window() -> None:
    assert parse_time("491231235959Z").year == 2049
    assert parse_time("500101000000Z").year == 1950
    assert parse_time("20500101000000Z").year == 2050


def test_subject_with_spaces_commas_and_escaped_tab() -> None:
    data = "V\t301231235959Z\t\t01\tunknown\t/CN=a b\\\tc/O=Acme, Inc.\n"
    assert 1 in parse_index(data.encode())


def test_comments_are_skipped_and_empty_file_is_empty_index() -> None:
    assert len(parse_index(b"")) == 0
    assert len(parse_index(b"# a comment\n" + line("V", "", "01").encode())) == 1


@pytest.mark.parametrize(
    ("data", "line_no", "words"),
    [
        (line("V", "", "01") + "V\t301231235959Z\t\t02\tunknown\n", 2, "5 TAB-separated fields"),
        (line("V", "", "01") + line("V", "", "02")[:-1], 2, "does not end in a newline"),
        (line("V", "", "01").replace("301231235959Z", "301331235959Z"), 1, "expiry"),
        (line("R", "261124011953Z,lostTheKey", "01"), 1, "unknown revocation reason"),
        (line("R", "26112401Z", "01"), 1, "not YYMMDDHHMMSSZ"),
        (line("X", "", "01"), 1, "not V, R or E"),
        (line("V", "", "0G"), 1, "not hexadecimal"),
        (line("V", "", "01") + line("R", "261124011953Z", "1"), 2, "appears twice"),
        (line("V", "261124011953Z", "01"), 1, "with a revocation field"),
        (line("R", "261124011953Z,holdInstruction,wait", "01"), 1, "hold instruction"),
    ],
)
def test_a_bad_line_refuses_the_file_naming_the_line(data: str, line_no: int, words: str) -> None:
    with pytest.raises(IndexFormatError) as info:
        parse_index(data.encode(), "/ca/index.txt")
    assert info.value.line == line_no
    assert words in str(info.value)
    assert str(info.value).startswith(f"/ca/index.txt:{line_no}: ")


def test_binary_file_is_refused() -> None:
    with pytest.raises(IndexFormatError, match="NUL byte"):
        parse_index(b"\x00\x01\x02binary\n")


def big_index(lines: int) -> bytes:
    out = []
    for n in range(lines):
        if n % 10 == 0:
            out.append(f"R\t301231235959Z\t250101000000Z,keyCompromise\t{n:08X}\tunknown\t/CN=r\n")
        elif n % 7 == 0:
            out.append(f"E\t201231235959Z\t\t{n:08X}\tunknown\t/CN=e{n}/O=Acme, Inc.\n")
        else:
            out.append(f"V\t301231235959Z\t\t{n:08X}\tunknown\t/CN=host-{n}.example.com\n")
        if n == 1234:
            out.append("# a comment in the middle\n")
    return "".join(out).encode()


def test_fast_and_careful_parsers_agree_across_blocks() -> None:
    import io

    from hsm_ocsp.core.index import _parse_stream

    data = big_index(120_000)  # several 4 MiB blocks
    assert len(data) > (1 << 22)  # more than one block
    fast = _parse_stream(io.BytesIO(data), "i", fast=True)
    careful = _parse_stream(io.BytesIO(data), "i", fast=False)
    assert fast.entries == careful.entries
    assert dict(fast.counts) == dict(careful.counts)
    assert fast.counts["R"] == 12_000


def test_a_serial_twice_in_distant_blocks_is_named_by_line() -> None:
    data = big_index(120_000) + line("V", "", "00000005").encode()
    with pytest.raises(IndexFormatError) as info:
        parse_index(data, "i")
    assert info.value.line == 120_002  # 120,000 records + 1 comment + the duplicate
    assert "appears twice" in str(info.value)


def test_a_bad_line_deep_in_a_large_file_is_named() -> None:
    data = big_index(120_000).replace(b"\t0001ADB0\t", b"\t0001ADBG\t")
    with pytest.raises(IndexFormatError, match="not hexadecimal") as info:
        parse_index(data, "i")
    assert info.value.line == 0x1ADB0 + 2  # 1-based, after the comment line


# --- a reload re-reads the new version against the snapshot in service -------------


def _reload(new: bytes, old: bytes) -> IndexSnapshot:
    import io

    from hsm_ocsp.core.index import parse_index_stream

    base = parse_index(old, "i")
    return parse_index_stream(io.BytesIO(new), "i", base)


def _revoke(data: bytes, serial: int, revinfo: str = "261124000000Z,superseded") -> bytes:
    old = f"V\t301231235959Z\t\t{serial:08X}\t".encode()
    assert old in data
    return data.replace(old, f"R\t301231235959Z\t{revinfo}\t{serial:08X}\t".encode())


@pytest.mark.parametrize(
    "change",
    [
        "none",
        "revoke two",
        "append new",
        "remove some",
        "revoked changes reason",
        "other index",
    ],
)
def test_reload_against_the_old_snapshot_gives_what_a_fresh_parse_gives(change: str) -> None:
    old = big_index(120_000)  # several blocks
    new = old
    if change == "revoke two":
        new = _revoke(_revoke(old, 1), 119_999)
    elif change == "append new":
        new = old + b"".join(line("V", "", f"{n:08X}").encode() for n in range(200_000, 200_050))
    elif change == "remove some":
        new = old.replace(b"V\t301231235959Z\t\t00000001\tunknown\t/CN=host-1.example.com\n", b"")
        new = new.replace(b"\t00000014\tunknown\t/CN=r\n", b"\t0000FFFF14\tunknown\t/CN=r\n")
    elif change == "revoked changes reason":
        new = old.replace(b"250101000000Z,keyCompromise\t0000000A\t", b"250101000000Z\t0000000A\t")
    elif change == "other index":
        new = big_index(5_000)
    reloaded = _reload(new, old)
    fresh = parse_index(new, "i")
    assert reloaded.entries == fresh.entries
    assert dict(reloaded.counts) == dict(fresh.counts)
    if change == "revoke two":
        revocation = reloaded.entries[1]
        assert revocation is not None and revocation.reason is RevocationReason.SUPERSEDED
    if change == "remove some":
        assert 1 not in reloaded.entries and 0x14 not in reloaded.entries
        assert 0xFFFF14 in reloaded.entries


def test_reload_shares_the_unchanged_entries_of_the_old_snapshot() -> None:
    import io

    from hsm_ocsp.core.index import parse_index_stream

    old_data = big_index(50_000)
    base = parse_index(old_data, "i")
    new = parse_index_stream(io.BytesIO(_revoke(old_data, 1)), "i", base)
    old_keys = {id(k): k for k in base.entries}
    assert all(id(k) in old_keys for k in new.entries)  # no second copy of the serials
    assert new.entries[0] is base.entries[0]  # an unchanged revocation, shared
    assert base.entries[1] is None  # the old snapshot is untouched
    assert new.entries[1] is not None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"V\t301231235959Z\t\t00000002\tunknown\t/CN=again\n", "appears twice"),
        (b"R\t301231235959Z\t250101000000Z,keyCompromise\t00000003\tunknown\t/CN=x\n", "twice"),
        (b"V\t301231235959Z\t\t0000ZZ\tunknown\t/CN=x\n", "not hexadecimal"),
        (b"V\t301231235959Z\t\t00ABCDEF\tunknown", "newline"),
    ],
)
def test_a_reload_names_the_bad_line_as_a_fresh_parse_does(bad: bytes, message: str) -> None:
    old = big_index(120_000)
    new = old + bad
    with pytest.raises(IndexFormatError) as fresh:
        parse_index(new, "i")
    with pytest.raises(IndexFormatError, match=message) as reloaded:
        _reload(new, old)
    assert str(reloaded.value) == str(fresh.value)
