"""CRLs judged and combined (core/crl.py), and the CRL source's last-good rule
(server/crl_source.py), on CRLs made by ``openssl ca -gencrl`` and by pyca's builder in
the shapes AD CS and EJBCA publish."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hsm_ocsp.config.model import CAConfig, CrlConfig, NotOnCrl
from hsm_ocsp.core.crl import CrlRefused, combine, later_than, read_crl
from hsm_ocsp.core.index import parse_index
from hsm_ocsp.core.model import RevocationReason
from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
from hsm_ocsp.core.revocation_memory import remember
from hsm_ocsp.server.crl_source import CrlSource

from .support.crls import NOW, Entry, delegate_certificate, idp, make_crl
from .support.events import Heard
from .support.pki import OpenSSLCA

OTHER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Another CA")])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLCA:
    """An openssl ca CA with a certificate in each revocation shape."""
    ca = OpenSSLCA(tmp_path_factory.mktemp("crlca"))
    ca.issue("good")
    for name, options in {
        "plain": (),
        "keycompromise": ("-crl_reason", "keyCompromise"),
        "hold": ("-crl_hold", "holdInstructionReject"),
        "keytime": ("-crl_compromise", "20260101120000Z"),
    }.items():
        ca.revoke(ca.issue(name), *options)
    return ca


def test_openssl_gencrl_says_what_the_index_says(ca: OpenSSLCA, tmp_path: Path) -> None:
    """Every revoked serial of the index, with its date, reason, invalidity date and hold
    instruction, read from the CRL ``openssl ca -gencrl`` makes of it."""
    der = ca.gencrl(tmp_path / "ca.crl", "-crlhours", "2").read_bytes()
    facts = read_crl(der, ca.certificate, NOW)
    index = parse_index(ca.index.read_bytes())
    revoked = {s: r for s, r in index.entries.items() if r is not None}
    assert len(revoked) == 4
    assert dict(facts.entries) == revoked
    reasons = {r.reason for r in facts.entries.values() if r is not None}
    assert RevocationReason.CERTIFICATE_HOLD in reasons
    assert RevocationReason.KEY_COMPROMISE in reasons
    hold = next(r for r in facts.entries.values() if r and r.hold_instruction)
    assert hold.hold_instruction == "1.2.840.10040.2.3"  # holdInstructionReject
    assert facts.number is not None and facts.next_update is not None
    assert facts.next_update - facts.this_update == dt.timedelta(hours=2)


def test_cfssl_gencrl(ca: OpenSSLCA, tmp_path: Path) -> None:
    """CFSSL's CRL (``cfssl gencrl``, Debian's golang-cfssl): bare base64 of the DER, no
    CRL number; every serial it was given is revoked."""
    key = tmp_path / "sec1.key"  # cfssl reads SEC 1 EC keys
    subprocess.run(
        ["openssl", "ec", "-in", ca.dir / "ca.key", "-out", key], check=True, capture_output=True
    )
    (tmp_path / "serials").write_text("4096\n4097\n123456789\n")  # decimal, as cfssl reads
    made = subprocess.run(
        ["cfssl", "gencrl", tmp_path / "serials", ca.cert_path, key],
        check=True,
        capture_output=True,
    )
    assert made.stdout[:3] == b"MII"
    facts = read_crl(made.stdout, ca.certificate, dt.datetime.now(dt.UTC))
    assert set(facts.entries) == {0x1000, 0x1001, 123456789}
    assert all(r is not None and r.reason is None for r in facts.entries.values())


def test_a_crl_that_does_not_deserve_trust_is_refused(ca: OpenSSLCA) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    subject = ca.certificate.subject
    cases = {
        "signature": make_crl(other_key, subject, [Entry(5)]),
        "issuer": make_crl(ca.key, OTHER, [Entry(5)]),
        "time": make_crl(ca.key, subject, this_update=NOW + dt.timedelta(hours=1)),
        "expired": make_crl(
            ca.key,
            subject,
            this_update=NOW - dt.timedelta(days=2),
            next_update=dt.timedelta(days=1),
        ),
        "format": b"\x30\x03\x02\x01\x01",
    }
    for label, der in cases.items():
        with pytest.raises(CrlRefused) as refused:
            read_crl(der, ca.certificate, NOW)
        assert refused.value.label == label, (label, str(refused.value))
    critical = x509.Extension(
        x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
        True,
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
    )
    with pytest.raises(CrlRefused, match="unknown critical extension"):
        read_crl(make_crl(ca.key, subject, extra=[critical]), ca.certificate, NOW)
    partial = x509.IssuingDistributionPoint(
        None, None, False, False, frozenset({x509.ReasonFlags.key_compromise}), False, False
    )
    with pytest.raises(CrlRefused, match="only some reasons"):
        read_crl(make_crl(ca.key, subject, idp=partial), ca.certificate, NOW)


def test_an_older_crl_never_replaces_a_newer_one(ca: OpenSSLCA) -> None:
    subject = ca.certificate.subject
    new = read_crl(make_crl(ca.key, subject, number=7), ca.certificate, NOW)
    old = read_crl(make_crl(ca.key, subject, number=6), ca.certificate, NOW)
    same_number = read_crl(
        make_crl(ca.key, subject, number=7, this_update=NOW - dt.timedelta(hours=3)),
        ca.certificate,
        NOW,
    )
    newer = read_crl(make_crl(ca.key, subject, number=8), ca.certificate, NOW)
    assert later_than(old, new) is not None and "lower" in str(later_than(old, new))
    assert later_than(same_number, new) is not None
    assert later_than(newer, new) is None
    partition = read_crl(
        make_crl(ca.key, subject, number=9, idp=idp("http://x/2.crl")), ca.certificate, NOW
    )
    assert "distribution point" in str(later_than(partition, new))


def test_delta_crls_add_and_release(ca: OpenSSLCA) -> None:
    """AD CS's base and delta: the delta adds revocations and releases a hold
    (removeFromCRL); a delta whose base is newer than the full CRL is not applied."""
    subject = ca.certificate.subject
    hold = x509.ReasonFlags.certificate_hold
    base = read_crl(
        make_crl(ca.key, subject, [Entry(1), Entry(2, reason=hold)], number=10), ca.certificate, NOW
    )
    delta = read_crl(
        make_crl(
            ca.key,
            subject,
            [Entry(3), Entry(2, reason=x509.ReasonFlags.remove_from_crl)],
            number=11,
            delta_of=10,
            next_update=dt.timedelta(hours=1),
        ),
        ca.certificate,
        NOW,
    )
    assert delta.delta
    combined = combine([base], [delta], issued=[1, 2, 3, 4])
    entries = combined.snapshot.entries
    assert entries[1] is not None and entries[3] is not None
    assert entries[2] is None and entries[4] is None  # released; issued and never revoked
    assert 5 not in entries  # never issued: unknown
    assert combined.valid_until == delta.next_update  # the sooner of the two
    ahead = read_crl(
        make_crl(ca.key, subject, [Entry(9)], number=13, delta_of=12), ca.certificate, NOW
    )
    skipped = combine([base], [ahead], issued=[1, 2, 9])
    assert skipped.snapshot.entries[9] is None and skipped.unused_deltas


def test_not_on_crl_good_answers_any_unlisted_serial_good(ca: OpenSSLCA) -> None:
    base = read_crl(make_crl(ca.key, ca.certificate.subject, [Entry(1)]), ca.certificate, NOW)
    entries = combine([base], [], issued=None).snapshot.entries
    assert 123456789 in entries and entries.get(123456789, "missing") is None
    assert entries[1] is not None and entries.get(1) is not None
    assert list(entries) == [1]  # what the producer fills ahead: the listed serials
    # The revocation memory keeps the mode when it lays a dropped revocation over it.
    kept = remember(combine([], [], issued=None).snapshot, {1: base.entries[1]})  # type: ignore[dict-item]
    assert kept.kept == [1]
    assert kept.snapshot.entries.get(77) is None and 77 in kept.snapshot.entries


def test_partitions_are_joined(ca: OpenSSLCA) -> None:
    """EJBCA's partitioned CRLs: each covers part of the serials; the status is all of them."""
    subject = ca.certificate.subject
    one = read_crl(
        make_crl(ca.key, subject, [Entry(1)], idp=idp("http://x/1.crl")), ca.certificate, NOW
    )
    two = read_crl(
        make_crl(ca.key, subject, [Entry(2)], idp=idp("http://x/2.crl")), ca.certificate, NOW
    )
    entries = combine([one, two], [], issued=[1, 2, 3]).snapshot.entries
    assert entries[1] is not None and entries[2] is not None and entries[3] is None


def test_an_indirect_crl_of_a_delegated_issuer(ca: OpenSSLCA, tmp_path: Path) -> None:
    """A CRL signed by a CRL issuer the CA certified with cRLSign, indirect: only the
    entries whose certificateIssuer is the CA are the CA's."""
    key, cert, _ = delegate_certificate(ca.key, ca.certificate, tmp_path)
    entries = [
        Entry(1, issuer=ca.certificate.subject),
        Entry(2),  # inherits: the CA's
        Entry(3, issuer=OTHER),
        Entry(4),
    ]  # another CA's
    der = make_crl(key, cert.subject, entries, idp=idp("http://x/i.crl", indirect=True))
    facts = read_crl(der, ca.certificate, NOW, delegate=cert)
    assert set(facts.entries) == {1, 2}
    with pytest.raises(CrlRefused, match="crl_issuer"):
        read_crl(der, ca.certificate, NOW)  # no delegate configured
    direct = make_crl(key, cert.subject, [Entry(1)])
    with pytest.raises(CrlRefused, match="not an indirect CRL"):
        read_crl(direct, ca.certificate, NOW, delegate=cert)


def _source(
    ca: OpenSSLCA, crl: Path, issued: Path | None, events: Heard | None = None
) -> CrlSource:
    mode = NotOnCrl.GOOD if issued is None else NotOnCrl.UNKNOWN
    config = CrlConfig(fulls=(str(crl),), issued=issued, not_on_crl=mode)
    ca_config = CAConfig(
        name="crlca",
        certificate_path=ca.cert_path,
        certificate=ca.certificate,
        index=Path("/dev/null"),
        key=parse_pkcs11_uri("pkcs11:object=x"),
        validity=dt.timedelta(hours=1),
        crl=config,
    )
    return CrlSource(ca_config, config, events=events)


def test_the_source_keeps_the_last_good_crl(ca: OpenSSLCA, tmp_path: Path) -> None:
    """A refused CRL (older, another key, expired, damaged) leaves the one in service; a
    newer good one is taken; issued serials come from new_certs_dir."""
    subject = ca.certificate.subject
    path = tmp_path / "ca.crl"
    path.write_bytes(make_crl(ca.key, subject, [Entry(0x1001)], number=5))
    heard = Heard()
    source = _source(ca, path, ca.dir / "newcerts", heard)
    refused = heard.refusals
    snapshot = source.load()
    assert snapshot.entries[0x1001] is not None
    issued = {int(p.stem, 16) for p in (ca.dir / "newcerts").glob("*.pem")}
    assert set(snapshot.entries) == issued  # every issued serial, no other
    other_key = ec.generate_private_key(ec.SECP256R1())
    for bad in (
        make_crl(ca.key, subject, [], number=4),
        make_crl(other_key, subject, [], number=6),
        make_crl(ca.key, subject, [], number=6, this_update=NOW - dt.timedelta(days=3)),
        b"garbage",
    ):
        path.write_bytes(bad)
        assert source.check() is False
        assert source.snapshot is snapshot and source.snapshot.entries[0x1001] is not None
    assert refused == ["order", "signature", "expired", "format"]
    path.write_bytes(make_crl(ca.key, subject, [Entry(0x1001), Entry(0x1000)], number=6))
    assert source.check() is True
    assert source.snapshot is not None and source.snapshot.entries[0x1000] is not None
    assert source.number == 6
    source.close()


def test_a_file_of_issued_serials_as_exports_write_them(tmp_path: Path) -> None:
    """One serial a line, as Vault (colons) and certutil (quotes) export them; a line that
    is no serial refuses the file, naming the line, and the serials read before stay."""
    from hsm_ocsp.server.crl_fetch import FetchError
    from hsm_ocsp.server.issued_serials import IssuedSerials

    path = tmp_path / "issued.txt"
    path.write_text('17:67:16:ab\n"1a2b"\n# a comment\n\nFF # trailing\n')
    issued = IssuedSerials(path, 1 << 20, OTHER)
    assert issued.read() is True
    assert issued.serials == frozenset({0x176716AB, 0x1A2B, 0xFF})
    assert issued.read() is False  # unchanged
    path.write_text("Serial Number\n1a2b\n")
    with pytest.raises(FetchError, match=r"issued.txt:1: .* is not a hex serial"):
        issued.read()
    assert issued.serials == {0x176716AB, 0x1A2B, 0xFF}
