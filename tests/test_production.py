"""The parts of the producer and of its workers, with a software signer and a
real LMDB store: what is produced ahead, what a worker serves from the store, what a
withdrawal does, and the link between the processes."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gc
import multiprocessing
import weakref
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from hsm_ocsp.core import front as front_module
from hsm_ocsp.core.front import Front
from hsm_ocsp.core.index import parse_index
from hsm_ocsp.core.model import CertStatus, OCSPResponseStatus
from hsm_ocsp.core.ocsp import CertID, OCSPRequest
from hsm_ocsp.core.pre_production import (
    Reason,
    cert_id,
    changed_serials,
    needs,
    prefixes,
)
from hsm_ocsp.core.record_check import RecordChecker
from hsm_ocsp.core.reply import Events, Reply
from hsm_ocsp.core.reply_wire import decode_reply, encode_reply
from hsm_ocsp.core.request import decode_request
from hsm_ocsp.core.responder import Issuer
from hsm_ocsp.core.shared_answers import (
    MISSING,
    Sharer,
    of_unknown,
    parse_key,
    shared_key,
    signer_fingerprint,
)
from hsm_ocsp.core.store_source import StoreSource
from hsm_ocsp.server.producer_link import ProducerClient, serve_link
from hsm_ocsp.store.lmdb_store import LmdbStore

from .support.pki import OpenSSLCA
from .support.requests import build_request
from .support.world import INDEX, World

GOOD, REVOKED = 0x1000, 0x1001


def _withdraw(directory: str, serial: int) -> None:
    store = LmdbStore(Path(directory))
    assert store.withdraw(prefixes("root", [serial])) == 1
    store.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLCA:
    return OpenSSLCA(tmp_path_factory.mktemp("productionca"))


@pytest.fixture
def store(tmp_path: Path) -> LmdbStore:
    return LmdbStore(tmp_path)


class _Producer:
    """The link to a producer whose service is ``world``'s: what it was asked."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.asked: list[OCSPRequest] = []

    async def answer(self, issuer: Issuer, request: OCSPRequest) -> Reply:
        self.asked.append(request)
        return await self.world.service.answer_for(issuer.name, request)

    def replaced(self, issuers: Sequence[Issuer], check: RecordChecker | None) -> None:
        pass


def _front(world: World, store: LmdbStore) -> tuple[Front, list[OCSPRequest]]:
    """A worker's front door: the store, then a producer that is ``world``'s service."""
    producer = _Producer(world)
    stored = StoreSource(store, clock=lambda: world.now)
    return Front([world.issuer], (stored, producer)), producer.asked


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_the_produced_certid_is_the_one_openssl_clients_send(ca: OpenSSLCA, algorithm: str) -> None:
    world = World(ca)
    subject = ca.issue("produced")
    cert = x509.load_pem_x509_certificate(subject.read_bytes())
    chosen = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}[algorithm]
    theirs = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, ca.certificate, chosen)
    ours = cert_id(world.issuer, algorithm, cert.serial_number)
    (sent,) = decode_request(theirs.build().public_bytes(Encoding.DER)).cert_ids
    assert ours.der == sent.der and ours == sent


def test_an_index_change_names_new_changed_and_gone_serials() -> None:
    old = parse_index(INDEX.encode())
    lines = INDEX.replace("V\t301231235959Z\t\t1000", "R\t301231235959Z\t261125000000Z\t1000")
    lines = lines.replace("E\t200201000000Z\t\t1002\tunknown\t/CN=expired\n", "")
    lines += "V\t301231235959Z\t\t2000\tunknown\t/CN=new\n"
    new = parse_index(lines.encode(), "index.txt")
    assert sorted(changed_serials(old, new)) == [0x1000, 0x1002, 0x2000]
    assert changed_serials(old, parse_index(INDEX.encode())) == []
    assert changed_serials(None, new) == []


async def test_a_worker_serves_the_stored_answer_and_asks_the_producer_for_the_rest(
    ca: OpenSSLCA, store: LmdbStore
) -> None:
    world = World(ca, shared=store)
    front, asked = _front(world, store)
    request = build_request([(ca.certificate, GOOD)])
    first = await front.respond(request)
    assert first.successful and len(asked) == 1 and world.signer.count == 1
    again = await front.respond(request)
    assert again.body == first.body and len(asked) == 1  # from the store, nobody asked
    assert again is await front.respond(request)  # the record read and checked once

    # Withdrawn (an index change): the worker asks, never serves the old record.
    world.snapshot = parse_index(
        INDEX.replace("V\t301231235959Z\t\t1000", "R\t301231235959Z\t261124000000Z\t1000").encode()
    )
    withdrawing = multiprocessing.get_context("spawn").Process(  # as the producer does
        target=_withdraw, args=(str(store.path.parent), GOOD)
    )
    withdrawing.start()
    withdrawing.join(30)
    assert withdrawing.exitcode == 0
    revoked = x509_ocsp.load_der_ocsp_response((await front.respond(request)).body)
    assert len(asked) == 2 and revoked.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED

    # Past its nextUpdate a stored answer is never served, whatever the store holds.
    world.now += dt.timedelta(hours=2)
    world.signer.fail = True
    late = await front.respond(request)
    assert len(asked) == 3 and late.status is OCSPResponseStatus.TRY_LATER


async def test_an_unknown_serials_answer_serves_every_worker_until_the_serial_is_issued(
    ca: OpenSSLCA, store: LmdbStore
) -> None:
    """An unknown serial's answer, signed once, goes to the store for
    every worker; the index issuing the serial withdraws it like any change."""
    world = World(ca, shared=store)
    front, asked = _front(world, store)
    other, asked_too = _front(world, store)
    request = build_request([(ca.certificate, 0x4242)])
    first = await front.respond(request)
    unknown = x509_ocsp.load_der_ocsp_response(first.body)
    assert unknown.certificate_status is x509_ocsp.OCSPCertStatus.UNKNOWN
    assert (await other.respond(request)).body == first.body  # another worker: from the store
    assert len(asked) == 1 and not asked_too and world.signer.count == 1

    issued = INDEX + "V\t301231235959Z\t\t4242\tunknown\t/CN=issued\n"
    world.snapshot = parse_index(issued.encode())  # and the producer withdraws the serial
    assert (
        store.withdraw(
            prefixes("root", changed_serials(parse_index(INDEX.encode()), world.snapshot))
        )
        == 1
    )
    now_good = x509_ocsp.load_der_ocsp_response((await other.respond(request)).body)
    assert now_good.certificate_status is x509_ocsp.OCSPCertStatus.GOOD and len(asked_too) == 1


def test_the_store_keeps_a_bounded_number_of_unknown_answers(
    ca: OpenSSLCA, store: LmdbStore
) -> None:
    """A flood of made-up serials keeps at most max_unknown answers, the newest; the
    answers of issued serials are never pushed out."""
    world = World(ca)
    sharer = Sharer(store, max_unknown=3)
    signer = world.issuer.signers[0]
    produced = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    reply = Reply(
        body=b"signed",
        status=OCSPResponseStatus.SUCCESSFUL,
        ca="root",
        cert_statuses=(CertStatus.UNKNOWN,),
        produced_at=produced,
        next_update=produced + dt.timedelta(hours=1),
        etag='"x"',
    )
    for serial in (GOOD, *range(0x5000, 0x5008)):
        value = None if serial == GOOD else MISSING
        sharer.save(reply, cert_id(world.issuer, "sha1", serial), value, signer, produced)
    kept = {parse_key(key)[1] for key, _ in store.items()}  # type: ignore[index]
    assert kept == {GOOD, 0x5005, 0x5006, 0x5007}
    assert [of_unknown(value) for _, value in store.items()].count(True) == 3


async def test_cached_answers_do_not_keep_an_old_index_in_memory(ca: OpenSSLCA) -> None:
    """An answer cached under one version of a million-line index must not keep that
    version alive after a reload (the producer held one per reload: +270 MiB)."""
    world = World(ca)
    request = build_request([(ca.certificate, GOOD)])
    first = await world.service.respond(request)
    old = weakref.ref(world.snapshot)
    world.snapshot = parse_index(INDEX.encode())  # a reload, nothing changed
    gc.collect()
    assert old() is None
    again = await world.service.respond(request)
    assert again.body == first.body and world.signer.count == 1  # still from the cache


async def test_a_worker_answers_bad_requests_and_foreign_cas_without_asking(
    ca: OpenSSLCA, store: LmdbStore
) -> None:
    world = World(ca)
    front, asked = _front(world, store)
    assert (await front.respond(b"\x30\x03junk")).status is OCSPResponseStatus.MALFORMED_REQUEST
    other = OpenSSLCA(ca.dir.parent / "other", "Other CA")
    foreign = await front.respond(build_request([(other.certificate, GOOD)]))
    assert foreign.status is OCSPResponseStatus.UNAUTHORIZED
    assert asked == [] and world.signer.count == 0


async def test_an_answer_of_a_replaced_signer_is_not_served(
    ca: OpenSSLCA, store: LmdbStore
) -> None:
    world = World(ca, shared=store)
    front, asked = _front(world, store)
    request = build_request([(ca.certificate, GOOD)])
    await front.respond(request)
    signer = dataclasses.replace(world.issuer.signers[0], key="root/other")
    front.replace_issuers([dataclasses.replace(world.issuer, signers=(signer,))])
    await front.respond(request)
    assert len(asked) == 2


def test_what_needs_producing(ca: OpenSSLCA, store: LmdbStore) -> None:
    world = World(ca, shared=store)
    signer = world.issuer.signer_at(world.now)
    assert signer is not None
    fingerprint = signer_fingerprint(signer)
    assert needs(None, None, fingerprint, world.now) is Reason.FILL
    asyncio.run(world.service.respond(build_request([(ca.certificate, GOOD)])))
    data = store.get(shared_key("root", cert_id(world.issuer, "sha1", GOOD)))
    assert data is not None
    assert needs(data, None, fingerprint, world.now) is None
    assert needs(data, None, b"x" * 8, world.now) is Reason.FILL  # another signer
    assert needs(data, "revoked", fingerprint, world.now) is Reason.FILL  # another truth
    far = dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()
    assert needs(data, None, fingerprint, world.now, (3600, far)) is None  # its validity
    assert needs(data, None, fingerprint, world.now, (7200, far)) is Reason.FILL  # reloaded
    capped = (world.now + dt.timedelta(hours=1)).timestamp()  # the signer ends then
    assert needs(data, None, fingerprint, world.now, (7200, capped)) is None
    later = world.now + dt.timedelta(minutes=31)  # past half of the hour's validity
    assert needs(data, None, fingerprint, later) is Reason.REFRESH


def test_a_reply_crosses_the_link_as_it_was() -> None:
    reply = Reply(
        b"\x30\x03\x0a\x01\x00",
        OCSPResponseStatus.SUCCESSFUL,
        "root",
        (),
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        '"e"',
        True,
    )
    back = decode_reply(encode_reply(reply))
    assert (back.body, back.ca, back.produced_at, back.next_update, back.etag, back.cached) == (
        reply.body,
        "root",
        reply.produced_at,
        reply.next_update,
        '"e"',
        True,
    )
    with pytest.raises(ValueError):
        decode_reply(encode_reply(reply)[:20])


async def test_the_link_answers_and_a_missing_producer_is_try_later(tmp_path: Path) -> None:
    """The link carries the request as the worker decoded it (CA, nonce, CertIDs' parts),
    answers out of order, and says tryLater while no producer listens."""
    path = tmp_path / "producer.sock"
    client = ProducerClient(path, timeout=5)

    def question(i: int) -> OCSPRequest:
        one = CertID("sha256" if i % 2 else None, bytes([i]) * 32, b"k" * 32, -i * 999, b"d" * i)
        return OCSPRequest((one,), None if i % 3 else bytes([i]) * 3)

    assert (await client.ask("root", question(1))).status is OCSPResponseStatus.TRY_LATER
    assert await client.problems() == ["producer: not reachable"]
    seen: list[tuple[str, OCSPRequest]] = []

    async def respond(ca: str, request: OCSPRequest) -> Reply:
        seen.append((ca, request))
        await asyncio.sleep(0.01 * len(seen))  # out of order: later asks answer first
        body = request.cert_ids[0].issuer_name_hash
        return Reply(body, OCSPResponseStatus.SUCCESSFUL, ca, (), None, None, '"t"')

    server = await serve_link(path, respond, lambda: ["token: gone"])
    try:
        await asyncio.sleep(0.3)  # past the retry pause
        replies = await asyncio.gather(*(client.ask(f"ca{i}", question(i)) for i in range(20)))
        assert [r.body for r in replies] == [bytes([i]) * 32 for i in range(20)]
        assert sorted(seen, key=lambda x: x[0]) == sorted(
            ((f"ca{i}", question(i)) for i in range(20)), key=lambda x: x[0]
        )  # every part as the worker decoded it
        assert await client.problems() == ["token: gone"]
        assert oct(path.stat().st_mode)[-3:] == "600"
    finally:
        server.close()
        await client.aclose()


def test_readyz_fails_when_a_stored_answer_nears_its_next_update_unrefreshed(
    ca: OpenSSLCA, store: LmdbStore, tmp_path: Path
) -> None:
    from hsm_ocsp.config.file import load_config
    from hsm_ocsp.server.health import margins
    from hsm_ocsp.server.metrics import Metrics
    from hsm_ocsp.server.production import Production

    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[producer]\nmin_margin = "30m"\n\n[[ca]]\nname = "root"\n'
        f'certificate = "{ca.cert_path}"\nindex = "{ca.index}"\n'
        'key = "pkcs11:token=t;object=k"\nvalidity = "1h"\n'
    )
    config = load_config(config_file)
    world = World(ca, shared=store)
    asyncio.run(world.service.respond(build_request([(ca.certificate, GOOD)])))
    production = Production(config, world.service, {}, store, Metrics())
    assert margins(config, production, {}) == []  # nothing looked at yet
    # The store's soonest nextUpdate is found as the refresh scan reads it.
    assert production._due("root", world.now.timestamp()) == []
    assert production.soonest["root"] == (world.now + dt.timedelta(hours=1)).timestamp()
    # The margin is min(min_margin, validity / 4): 15 minutes here.
    now = dt.datetime.now(dt.UTC).timestamp()
    production.soonest["root"] = now + 20 * 60
    assert margins(config, production, {}) == []
    production.soonest["root"] = now + 10 * 60
    (problem,) = margins(config, production, {})
    assert problem.startswith("CA root: a stored answer is ") and "not refreshed" in problem


class _Counted(Events):
    def __init__(self) -> None:
        self.lookups: list[str] = []
        self.reasons: list[str] = []

    def cache_lookup(self, result: str) -> None:
        self.lookups.append(result)

    def signed_for(self, reason: str) -> None:
        self.reasons.append(reason)


async def test_the_producer_produces_from_the_certid_with_its_reason(
    ca: OpenSSLCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request bytes to itself: the answer is made from the CertID, signed for the
    reason given, kept for clients, and the producer's look-ups are not clients'."""
    events = _Counted()
    world = World(ca, events=events)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the producer decoded a request")

    monkeypatch.setattr(front_module, "decode_request", no_decoding)
    one = cert_id(world.issuer, "sha256", REVOKED)
    reply = await world.service.produce("root", one, Reason.CHANGE)
    assert reply.successful and world.signer.count == 1 and events.reasons == ["change"]
    again = await world.service.produce("root", one, Reason.REFRESH)  # fresh: kept
    assert again.body == reply.body and world.signer.count == 1 and events.lookups == []
    gone = await world.service.produce("elsewhere", one, Reason.FILL)
    assert gone.status is OCSPResponseStatus.TRY_LATER and world.signer.count == 1
    monkeypatch.undo()
    request = x509_ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        one.issuer_name_hash, one.issuer_key_hash, REVOKED, hashes.SHA256()
    )
    client = await world.service.respond(request.build().public_bytes(Encoding.DER))
    assert client.body == reply.body and events.lookups == ["hit"]  # a client's counts
    answer = x509_ocsp.load_der_ocsp_response(client.body)
    assert answer.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED


async def test_a_request_the_worker_asks_for_is_decoded_once(
    ca: OpenSSLCA, store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nonce, a serial the store lacks, several CertIDs: decoded by the worker, which
    hands the decoded parts over; the producer decodes nothing."""
    world = World(ca, shared=store)
    front, asked = _front(world, store)
    decoded: list[bytes] = []
    from hsm_ocsp.core.request import decode_request as real

    def counted(data: bytes, **kwargs: int) -> OCSPRequest:
        decoded.append(data)
        return real(data, **kwargs)

    monkeypatch.setattr(front_module, "decode_request", counted)
    nonce = b"\x04\x10" + bytes(range(16))
    for request, nonced in (
        (build_request([(ca.certificate, GOOD)], nonce=nonce), True),
        (build_request([(ca.certificate, REVOKED)]), False),
        (build_request([(ca.certificate, GOOD), (ca.certificate, REVOKED)]), False),
    ):
        reply = await front.respond(request)
        assert reply.successful, reply
        answer = x509_ocsp.load_der_ocsp_response(reply.body)
        nonces = [e for e in answer.extensions if isinstance(e.value, x509.OCSPNonce)]
        assert bool(nonces) is nonced
    assert len(asked) == 3 and asked[0].nonce is not None and asked[1].nonce is None
    assert len(decoded) == 3  # once each, by the worker: the producer decodes nothing
