"""The fast path (exact request bytes -> cached answer) obeys the cache's rules.

A repeated request skips decoding, but never the freshness and per-serial
checks: it must answer the same bytes as a decoded request would, and a status
change, a stale entry, a nonce or another CA path must never be served from it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.x509 import ocsp as x509_ocsp

from hsm_ocsp.core.index import parse_index

from .support.pki import OpenSSLCA
from .support.requests import build_request
from .support.world import INDEX, World


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLCA:
    return OpenSSLCA(tmp_path_factory.mktemp("perfca"))


@pytest.fixture
def make_world(ca: OpenSSLCA) -> Callable[..., World]:
    return lambda **kw: World(ca, **kw)


def _status(body: bytes) -> x509_ocsp.OCSPCertStatus:
    return x509_ocsp.load_der_ocsp_response(body).certificate_status


async def test_repeated_request_answers_the_same_bytes_without_signing(
    make_world: Callable[..., World],
) -> None:
    w = make_world()
    der = build_request([(w.ca.certificate, 0x1000)])
    first = await w.service.respond(der)
    second = await w.service.respond(der)
    third = await w.service.respond(bytes(der))  # equal bytes, another object
    assert w.signer.count == 1
    assert first.body == second.body == third.body
    assert second.cached and third.cached


async def test_fast_path_and_decoded_path_give_the_same_reply(
    make_world: Callable[..., World],
) -> None:
    w = make_world()
    sha1 = build_request([(w.ca.certificate, 0x1000)])
    await w.service.respond(sha1)
    w.service._front._known.clear()  # the next answer comes through decoding
    decoded = await w.service.respond(sha1)
    fast = await w.service.respond(sha1)
    assert decoded == fast
    assert w.signer.count == 1


async def test_status_change_is_never_served_from_the_fast_path(
    make_world: Callable[..., World],
) -> None:
    w = make_world()
    der = build_request([(w.ca.certificate, 0x1000)])
    assert _status((await w.service.respond(der)).body) == x509_ocsp.OCSPCertStatus.GOOD
    await w.service.respond(der)
    w.snapshot = parse_index(
        INDEX.replace(
            "V\t301231235959Z\t\t1000", "R\t301231235959Z\t261124011953Z,superseded\t1000"
        ).encode()
    )
    reply = await w.service.respond(der)
    assert _status(reply.body) == x509_ocsp.OCSPCertStatus.REVOKED
    assert not reply.cached
    assert w.signer.count == 2


async def test_unrelated_status_change_keeps_the_fast_path(
    make_world: Callable[..., World],
) -> None:
    w = make_world()
    der = build_request([(w.ca.certificate, 0x1000)])
    await w.service.respond(der)
    w.snapshot = parse_index((INDEX + "V\t301231235959Z\t\t2000\tunknown\t/CN=new\n").encode())
    assert (await w.service.respond(der)).cached
    assert w.signer.count == 1


async def test_entry_past_half_validity_is_signed_again(make_world: Callable[..., World]) -> None:
    import datetime as dt

    w = make_world()
    der = build_request([(w.ca.certificate, 0x1000)])
    await w.service.respond(der)
    await w.service.respond(der)
    w.now += dt.timedelta(minutes=31)  # validity 1 h: refresh at 30 min
    reply = await w.service.respond(der)
    assert not reply.cached
    assert w.signer.count == 2


async def test_nonce_requests_are_signed_every_time_with_echo(
    make_world: Callable[..., World],
) -> None:
    w = make_world()
    der = build_request([(w.ca.certificate, 0x1000)], nonce=b"0123456789abcdef")
    one = await w.service.respond(der)
    two = await w.service.respond(der)
    assert w.signer.count == 2
    assert not one.cached and not two.cached
    assert not w.service._front._known


async def test_ca_path_is_part_of_the_fast_path_key(make_world: Callable[..., World]) -> None:
    w = make_world()
    der = build_request([(w.ca.certificate, 0x1000)])
    assert (await w.service.respond(der, "root")).successful
    other = await w.service.respond(der, "other")
    assert other.status.name == "UNAUTHORIZED"


async def test_fast_path_map_is_bounded(make_world: Callable[..., World]) -> None:
    w = make_world(cache_entries=3)
    for serial in range(0x3000, 0x3010):
        await w.service.respond(build_request([(w.ca.certificate, serial)]))
    assert len(w.service._front._known) <= 3
    assert w.service.cache_size() <= 3
