"""RFC 6960 rules in the protocol core: no token, no socket.

The signer here is a software key behind the same Signer interface the token
implements; everything else (decode, status rules, encode, cache) is the code
that runs in production.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp

from hsm_ocsp.core.index import parse_index
from hsm_ocsp.core.model import OCSPResponseStatus
from hsm_ocsp.core.responder import Issuer, key_hash

from .support.pki import OpenSSLCA
from .support.requests import build_request, cert_id
from .support.world import INDEX, NOW, SoftwareSigner, World


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLCA:
    return OpenSSLCA(tmp_path_factory.mktemp("coreca"))


@pytest.fixture
def world(ca: OpenSSLCA) -> Callable[..., World]:
    return lambda **kw: World(ca, **kw)


def verify_signature(response: x509_ocsp.OCSPResponse, signer: SoftwareSigner) -> None:
    signer.key.public_key().verify(
        response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256())
    )


async def test_good_revoked_expired_and_unknown(world: Callable[..., World]) -> None:
    w = world()
    statuses = {}
    for serial in (0x1000, 0x1001, 0x1002, 0x9999):
        resp = await w.ask(build_request([(w.ca.certificate, serial)]))
        assert resp.response_status is x509_ocsp.OCSPResponseStatus.SUCCESSFUL
        verify_signature(resp, w.signer)
        statuses[serial] = resp.certificate_status
    assert statuses == {
        0x1000: x509_ocsp.OCSPCertStatus.GOOD,
        0x1001: x509_ocsp.OCSPCertStatus.REVOKED,
        0x1002: x509_ocsp.OCSPCertStatus.GOOD,
        0x9999: x509_ocsp.OCSPCertStatus.UNKNOWN,
    }


async def test_revoked_carries_time_and_reason(world: Callable[..., World]) -> None:
    w = world()
    resp = await w.ask(build_request([(w.ca.certificate, 0x1001)]))
    assert resp.revocation_time_utc == dt.datetime(2026, 11, 24, 1, 19, 53, tzinfo=dt.UTC)
    assert resp.revocation_reason is x509.ReasonFlags.key_compromise
    assert len(resp.single_extensions) == 0  # reasonCode never a single extension


async def test_hold_instruction_and_invalidity_date_are_single_extensions(
    world: Callable[..., World],
) -> None:
    w = world()
    hold = await w.ask(build_request([(w.ca.certificate, 0x1003)]))
    assert hold.revocation_reason is x509.ReasonFlags.certificate_hold
    code = hold.single_extensions.get_extension_for_oid(x509.ObjectIdentifier("2.5.29.23"))
    assert isinstance(code.value, x509.UnrecognizedExtension)
    assert code.value.value == bytes.fromhex("06072a8648ce380203")  # holdInstructionReject
    key = await w.ask(build_request([(w.ca.certificate, 0x1004)]))
    date = key.single_extensions.get_extension_for_class(x509.InvalidityDate)
    assert date.value.invalidity_date_utc == dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)


async def test_times_are_whole_seconds_and_next_update_is_this_update_plus_validity(
    world: Callable[..., World],
) -> None:
    w = world()
    w.now = NOW
    resp = await w.ask(build_request([(w.ca.certificate, 0x1000)]))
    assert resp.produced_at_utc == NOW
    assert resp.this_update_utc == NOW
    assert resp.next_update_utc == NOW + dt.timedelta(hours=1)
    raw = (await w.service.respond(build_request([(w.ca.certificate, 0x1000)]))).body
    assert b"20261124120000Z" in raw and b"20261124120000." not in raw


async def test_responder_id_is_key_hash_of_the_signer(world: Callable[..., World]) -> None:
    w = world()
    resp = await w.ask(build_request([(w.ca.certificate, 0x1000)]))
    assert resp.responder_name is None
    assert resp.responder_key_hash == key_hash(w.ca.certificate)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
async def test_cert_id_hash_algorithms_are_matched_and_echoed(
    world: Callable[..., World], algorithm: str
) -> None:
    w = world()
    request = build_request([(w.ca.certificate, 0x1001)], algorithm=algorithm)
    reply = await w.service.respond(request)
    resp = x509_ocsp.load_der_ocsp_response(reply.body)
    assert resp.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    assert resp.hash_algorithm.name == algorithm
    assert cert_id(w.ca.certificate, 0x1001, algorithm).dump() in reply.body


async def test_several_cert_ids_get_one_single_response_each_in_order(
    world: Callable[..., World],
) -> None:
    w = world()
    serials = [0x1001, 0x1000, 0x4242, 0x1002]
    resp = await w.ask(build_request([(w.ca.certificate, s) for s in serials]))
    got = [(r.serial_number, r.certificate_status) for r in resp.responses]
    assert got == [
        (0x1001, x509_ocsp.OCSPCertStatus.REVOKED),
        (0x1000, x509_ocsp.OCSPCertStatus.GOOD),
        (0x4242, x509_ocsp.OCSPCertStatus.UNKNOWN),
        (0x1002, x509_ocsp.OCSPCertStatus.GOOD),
    ]


async def test_more_cert_ids_than_the_cap_is_malformed(world: Callable[..., World]) -> None:
    w = world(max_cert_ids=4)
    ok = await w.ask(build_request([(w.ca.certificate, s) for s in range(4)]))
    assert ok.response_status is x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    over = await w.ask(build_request([(w.ca.certificate, s) for s in range(5)]))
    assert over.response_status is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


async def test_cert_id_of_another_issuer_next_to_ours_is_unknown(
    world: Callable[..., World], tmp_path: Path
) -> None:
    w = world()
    other = OpenSSLCA(tmp_path / "other", "Other CA")
    resp = await w.ask(build_request([(w.ca.certificate, 0x1000), (other.certificate, 0x1000)]))
    assert [r.certificate_status for r in resp.responses] == [
        x509_ocsp.OCSPCertStatus.GOOD,
        x509_ocsp.OCSPCertStatus.UNKNOWN,
    ]


async def test_issuer_not_served_is_unauthorized(
    world: Callable[..., World], tmp_path: Path
) -> None:
    w = world()
    other = OpenSSLCA(tmp_path / "other", "Other CA")
    reply = await w.service.respond(build_request([(other.certificate, 0x1000)]))
    assert reply.status is OCSPResponseStatus.UNAUTHORIZED
    assert reply.body == bytes.fromhex("3003 0a01 06")


async def test_ca_path_restricts_the_issuer(world: Callable[..., World]) -> None:
    w = world()
    request = build_request([(w.ca.certificate, 0x1000)])
    assert (await w.service.respond(request, "root")).status is OCSPResponseStatus.SUCCESSFUL
    assert (await w.service.respond(request, "other")).status is OCSPResponseStatus.UNAUTHORIZED


async def test_unsupported_hash_algorithm_is_not_matched(world: Callable[..., World]) -> None:
    w = world()
    reply = await w.service.respond(build_request([(w.ca.certificate, 0x1000)], algorithm="md5"))
    assert reply.status is OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"hello, world",
        b"\x30\x03\x02\x01\x01",
        b"\x30\x80\x00\x00",  # indefinite length is not DER
    ],
)
async def test_bytes_that_are_not_a_request_are_malformed(
    world: Callable[..., World], data: bytes
) -> None:
    w = world()
    reply = await w.service.respond(data)
    assert reply.status is OCSPResponseStatus.MALFORMED_REQUEST
    assert reply.body == bytes.fromhex("3003 0a01 01")  # no responseBytes (RFC 6960 4.2.1)
    assert w.signer.count == 0


async def test_trailing_bytes_after_the_request_are_malformed(world: Callable[..., World]) -> None:
    w = world()
    reply = await w.service.respond(build_request([(w.ca.certificate, 0x1000)]) + b"\x00")
    assert reply.status is OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize("length", [1, 16, 32, 128])
async def test_nonce_is_echoed_exactly(world: Callable[..., World], length: int) -> None:
    w = world()
    nonce = bytes(range(length))
    resp = await w.ask(build_request([(w.ca.certificate, 0x1000)], nonce=nonce))
    ext = resp.extensions.get_extension_for_class(x509.OCSPNonce)
    assert ext.value.nonce == nonce
    assert len(resp.extensions) == 1  # only the nonce (RFC 9919 2.2.1)


@pytest.mark.parametrize("length", [0, 129, 300])
async def test_nonce_of_bad_length_is_malformed(world: Callable[..., World], length: int) -> None:
    w = world()
    reply = await w.service.respond(
        build_request([(w.ca.certificate, 0x1000)], nonce=b"\x01" * length)
    )
    assert reply.status is OCSPResponseStatus.MALFORMED_REQUEST


async def test_nonce_that_is_not_an_octet_string_is_malformed(
    world: Callable[..., World],
) -> None:
    w = world()
    request = build_request([(w.ca.certificate, 0x1000)], nonce=b"wxyz")
    bad = request.replace(b"\x04\x04wxyz", b"\x0c\x04wxyz")
    assert bad != request
    assert (await w.service.respond(bad)).status is OCSPResponseStatus.MALFORMED_REQUEST


async def test_unknown_extensions(world: Callable[..., World]) -> None:
    w = world()
    quiet = build_request(
        [(w.ca.certificate, 0x1000)], extensions=[("1.2.3.4", False, b"\x05\x00")]
    )
    assert (await w.service.respond(quiet)).status is OCSPResponseStatus.SUCCESSFUL
    loud = build_request([(w.ca.certificate, 0x1000)], extensions=[("1.2.3.4", True, b"\x05\x00")])
    assert (await w.service.respond(loud)).status is OCSPResponseStatus.MALFORMED_REQUEST


async def test_index_not_loaded_is_try_later_never_good(world: Callable[..., World]) -> None:
    w = world()
    w.snapshot = None
    reply = await w.service.respond(build_request([(w.ca.certificate, 0x1000)]))
    assert reply.status is OCSPResponseStatus.TRY_LATER
    assert reply.body == bytes.fromhex("3003 0a01 03")


async def test_token_failure_is_try_later(world: Callable[..., World]) -> None:
    w = world()
    w.signer.fail = True
    reply = await w.service.respond(build_request([(w.ca.certificate, 0x1000)]))
    assert reply.status is OCSPResponseStatus.TRY_LATER


async def test_non_issued_as_revoked_per_rfc6960_2_2(world: Callable[..., World]) -> None:
    w = world(unknown_as_revoked=True)
    resp = await w.ask(build_request([(w.ca.certificate, 0x777)]))
    assert resp.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_time_utc == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert resp.revocation_reason is x509.ReasonFlags.certificate_hold
    oids = [e.oid.dotted_string for e in resp.extensions]
    assert oids == ["1.3.6.1.5.5.7.48.1.9"]  # extended revoke
    good = await w.ask(build_request([(w.ca.certificate, 0x1000)]))
    assert good.certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    assert len(good.extensions) == 0


async def test_repeated_request_is_served_from_cache_without_signing(
    world: Callable[..., World],
) -> None:
    w = world()
    request = build_request([(w.ca.certificate, 0x1000)])
    first = await w.service.respond(request)
    second = await w.service.respond(request)
    assert w.signer.count == 1
    assert second.body == first.body and second.cached


async def test_cache_refreshes_at_half_validity(world: Callable[..., World]) -> None:
    w = world()
    request = build_request([(w.ca.certificate, 0x1000)])
    first = await w.service.respond(request)
    w.now = NOW + dt.timedelta(minutes=29, seconds=59)
    assert (await w.service.respond(request)).body == first.body
    w.now = NOW + dt.timedelta(minutes=30)
    fresh = await w.service.respond(request)
    assert fresh.body != first.body and w.signer.count == 2


async def test_index_change_drops_only_changed_entries(world: Callable[..., World]) -> None:
    w = world()
    good = build_request([(w.ca.certificate, 0x1000)])
    other = build_request([(w.ca.certificate, 0x1002)])
    await w.service.respond(good)
    await w.service.respond(other)
    assert w.signer.count == 2
    w.snapshot = parse_index(
        INDEX.replace(
            "V\t301231235959Z\t\t1000", "R\t301231235959Z\t261125000000Z,superseded\t1000"
        ).encode()
    )
    assert (await w.ask(other)).certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    assert w.signer.count == 2  # unchanged serial: still cached
    revoked = await w.ask(good)
    assert revoked.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    assert w.signer.count == 3


async def test_nonce_requests_are_signed_every_time(world: Callable[..., World]) -> None:
    w = world()
    for i in range(3):
        await w.service.respond(build_request([(w.ca.certificate, 0x1000)], nonce=bytes([i]) * 16))
    assert w.signer.count == 3


async def test_nonce_ignore_answers_from_cache_without_nonce(world: Callable[..., World]) -> None:
    w = world(echo_nonce=False)
    for i in range(3):
        resp = await w.ask(build_request([(w.ca.certificate, 0x1000)], nonce=bytes([i]) * 16))
        assert len(resp.extensions) == 0
    assert w.signer.count == 1


async def test_cache_is_bounded(world: Callable[..., World]) -> None:
    """Serials the CA never issued hold at most a quarter of the entries."""
    w = world(cache_entries=10)
    for serial in range(50):
        await w.service.respond(build_request([(w.ca.certificate, serial)]))
    assert w.service.cache_size() == 10 // 4


async def test_pending_signatures_beyond_the_bound_get_try_later(
    world: Callable[..., World],
) -> None:
    w = world(max_pending_signatures=0)
    reply = await w.service.respond(build_request([(w.ca.certificate, 0x1000)]))
    assert reply.status is OCSPResponseStatus.TRY_LATER
    assert w.signer.count == 0


def test_issuer_hashes_match_cryptography_request_builder(ca: OpenSSLCA) -> None:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(77)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    issuer = Issuer.from_certificates("root", ca.certificate, None, dt.timedelta(hours=1))
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        req = (
            x509_ocsp.OCSPRequestBuilder().add_certificate(leaf, ca.certificate, algorithm).build()
        )
        assert req.issuer_key_hash == issuer.key_hashes[algorithm.name]
        assert req.issuer_name_hash == issuer.name_hashes[algorithm.name]
    spki = ca.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert hashlib.sha1(spki).digest() != issuer.key_hashes["sha1"]  # bits, not the whole SPKI


async def test_unrefreshed_answer_is_not_served_once_the_index_changed_during_the_refresh(
    world: Callable[..., World],
) -> None:
    """Hardening item 3's fault path: the refresh fails while a revocation comes in. The
    cached `good` is served past its refresh time only while the index still says so."""
    w = world()
    request = build_request([(w.ca.certificate, 0x1000)])
    first = await w.service.respond(request)
    w.now = NOW + dt.timedelta(minutes=45)  # past the refresh, before nextUpdate
    w.signer.fail = True
    assert (await w.service.respond(request)).body == first.body  # still true: served

    revoked = INDEX.replace("V\t301231235959Z\t\t1000", "R\t301231235959Z\t261124120000Z\t1000")

    def revoke() -> None:
        w.snapshot = parse_index(revoked.encode())  # the index changes meanwhile

    w.signer.meanwhile = revoke
    reply = await w.service.respond(request)
    assert reply.status is OCSPResponseStatus.TRY_LATER  # never the withdrawn `good`
