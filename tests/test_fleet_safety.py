"""A fleet under faults: a signing host and a keyless edge sharing a real
redis-server. An edge never goes back to an older answer than it has seen, whatever
Redis does, and catches up whatever interrupts it."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from .support.ca import CASetup, build_ca
from .support.cut_proxy import CutProxy
from .support.fleet import body_for, edge_host, filled, metric, ready, signing_host
from .support.redis import RedisServer
from .support.softhsm import SoftHSM
from .support.watch import status_of, until

pytestmark = pytest.mark.slow
GOOD, REVOKED = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED


def test_an_edge_whose_first_copy_is_cut_short_copies_again(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    """The edge held good answers for 30 serials, then restarted after they were
    revoked; one Redis connection dies in the middle of its first copy. It copies again
    (not only the stream from the point it had reached), so every one is revoked."""
    setup = build_ca(tmp_path / "ca", softhsm)
    victims = [f"s{i}" for i in range(30)]
    for name in victims:
        setup.certs[name] = setup.ca.issue(name)
    signing = signing_host(tmp_path, setup, redis_server.url, "signing")
    edge = proxy = None
    try:
        filled(signing, setup)
        edge = edge_host(tmp_path, setup, redis_server.url)
        until(functools.partial(ready, edge), 30)
        for name in victims:
            assert status_of(edge.url, body_for(setup, name)) is GOOD
        edge.stop()
        for name in victims:
            setup.ca.revoke(setup.certs[name], "-crl_reason", "keyCompromise")
        for name in victims:
            until(lambda n=name: status_of(signing.url, body_for(setup, n)) is REVOKED, 20)
        proxy = CutProxy(tmp_path / "proxy.sock", redis_server.socket, cut_after=8192).start()
        edge = edge_host(tmp_path, setup, proxy.url)
        until(lambda: ready(edge), 30)
        assert proxy.cuts == 1
        for name in victims:
            for algorithm in ("sha1", "sha256"):
                assert status_of(edge.url, body_for(setup, name, algorithm)) is REVOKED, name
    finally:
        if edge is not None:
            edge.stop()
        if proxy is not None:
            proxy.stop()
        signing.stop()


def test_junk_in_redis_is_skipped_and_replication_goes_on(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    """Anyone with the Redis URL can write there: keys of another type in the answers'
    namespace, entries of a megabyte. They are skipped (and counted), never copied, and
    a revocation still reaches the edge; the signing host keeps its lease."""
    import redis

    setup = build_ca(tmp_path / "ca", softhsm)
    signing = signing_host(tmp_path, setup, redis_server.url, "signing")
    edge = None
    try:
        filled(signing, setup)
        client = redis.Redis(unix_socket_path=str(redis_server.socket))
        client.set(b"hsm-ocsp:s:junk-string", b"x")  # a string where hashes live
        client.rpush(b"hsm-ocsp:s:junk-list", b"x")
        client.hset(b"hsm-ocsp:s:junk-big", b"f", b"\0" * (1 << 20))
        edge = edge_host(tmp_path, setup, redis_server.url)
        until(lambda: ready(edge), 30)
        assert status_of(edge.url, body_for(setup, "good")) is GOOD
        # Withdrawals of no serial (an empty prefix would match every key) are skipped.
        junks: list[dict[bytes | str, bytes | str]] = [
            {b"o": b"w", b"p": b""},
            {b"o": b"w"},
            {b"o": b"w", b"p": b"root\0"},
        ]
        for junk in junks:
            client.xadd(b"hsm-ocsp:changes", junk)  # type: ignore[arg-type]
        time.sleep(1)
        for name in ("good", "expired", "keycompromise"):
            assert status_of(edge.url, body_for(setup, name)) in (GOOD, REVOKED)
        assert status_of(edge.url, body_for(setup, "good")) is GOOD
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        until(lambda: status_of(edge.url, body_for(setup, "good")) is REVOKED, 20)
        time.sleep(6)  # a flapping lease shows within a renewal or two
        log = signing.log.read_text()
        assert log.count("pre-producing for") == 1, log[-3000:]
    finally:
        if edge is not None:
            edge.stop()
        signing.stop()


def _serial_name(setup: CASetup, name: str) -> bytes:
    from hsm_ocsp.core.shared_answers import serial_prefix
    from hsm_ocsp.store.redis_fleet import SERIAL

    return SERIAL + serial_prefix("root", setup.serial(name))


def test_an_old_answer_or_junk_written_back_into_redis_is_never_served(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    """Anyone holding the Redis URL writes back the signed good answer of a serial revoked
    since, and 2,000 random bytes as another serial's answer, in the hash and the change
    stream. Neither the edge nor the lease holder serves either; the lease holder puts
    its own answers back, so a new edge copies the right ones."""
    import os

    import redis

    setup = build_ca(tmp_path / "ca", softhsm)
    signing = signing_host(tmp_path, setup, redis_server.url, "signing")
    edge = fresh = None
    try:
        filled(signing, setup)
        edge = edge_host(tmp_path, setup, redis_server.url)
        until(lambda: ready(edge), 30)
        client = redis.Redis(unix_socket_path=str(redis_server.socket))
        good, expired = _serial_name(setup, "good"), _serial_name(setup, "expired")
        old = client.hgetall(good)
        assert len(old) == 2
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        for server in (signing, edge):
            until(lambda s=server: status_of(s.url, body_for(setup, "good")) is REVOKED, 20)
        stream = b"hsm-ocsp:changes"
        prefix = good[len(b"hsm-ocsp:s:") :]
        for der, value in old.items():
            client.hset(good, der, value)
            client.xadd(stream, {b"o": b"p", b"p": prefix, b"f": der, b"v": value, b"h": b"x"})
        der = next(iter(client.hgetall(expired)))
        junk = os.urandom(2000)
        client.hset(expired, der, junk)
        client.xadd(
            stream,
            {b"o": b"p", b"p": expired[len(b"hsm-ocsp:s:") :], b"f": der, b"v": junk, b"h": b"x"},
        )
        time.sleep(3)
        for server in (signing, edge):
            for algorithm in ("sha1", "sha256"):
                for _ in range(4):
                    assert status_of(server.url, body_for(setup, "good", algorithm)) is REVOKED
                    assert status_of(server.url, body_for(setup, "expired", algorithm)) is GOOD
        assert metric(edge, "hsm_ocsp_replication_refused") >= 3
        fresh = edge_host(tmp_path, setup, redis_server.url, "fresh")  # copies Redis now
        until(lambda: ready(fresh), 30)
        for algorithm in ("sha1", "sha256"):
            assert status_of(fresh.url, body_for(setup, "good", algorithm)) is REVOKED
            assert status_of(fresh.url, body_for(setup, "expired", algorithm)) is GOOD
    finally:
        for running in (fresh, edge):
            if running is not None:
                running.stop()
        signing.stop()


def test_a_redis_restored_from_an_older_snapshot_is_found_and_refilled(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    """Redis restarts from the snapshot it saved before a revocation: the old good answer
    is back in it, with the old epoch. The edge that saw the revocation never goes back;
    the lease holder sees that Redis went back and publishes again, so an edge that
    copies it afresh ends with the revocation too."""
    import redis

    setup = build_ca(tmp_path / "ca", softhsm)
    signing = signing_host(tmp_path, setup, redis_server.url, "signing")
    edge = fresh = None
    try:
        filled(signing, setup)
        edge = edge_host(tmp_path, setup, redis_server.url)
        until(lambda: ready(edge), 30)
        redis.Redis(unix_socket_path=str(redis_server.socket)).save()  # the old snapshot
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        until(lambda: status_of(edge.url, body_for(setup, "good")) is REVOKED, 20)
        redis_server.kill()
        redis_server.start()  # loads the snapshot: the good answer is back
        restored = time.monotonic()
        fresh = edge_host(tmp_path, setup, redis_server.url, "fresh")
        until(lambda: "went back in time" in signing.log.read_text(), 20)
        for algorithm in ("sha1", "sha256"):
            until(
                lambda a=algorithm: status_of(fresh.url, body_for(setup, "good", a)) is REVOKED, 20
            )
        for _ in range(5):
            for server in (edge, fresh):
                assert status_of(server.url, body_for(setup, "good")) is REVOKED
        assert time.monotonic() - restored < 30
    finally:
        for running in (fresh, edge):
            if running is not None:
                running.stop()
        signing.stop()


def test_a_signing_host_whose_index_lags_never_takes_the_lease(
    tmp_path: Path, softhsm: SoftHSM, redis_server: RedisServer
) -> None:
    """Host A leads; host B reads a copy of the index that lags (20 revocations behind).
    A stops: B does not take the lease while its index is behind the fleet's view, so it
    never publishes its older answers; the edge keeps answering the revocations. Once
    B's copy catches up, B leads."""
    import shutil

    setup = build_ca(tmp_path / "ca", softhsm)
    victims = [f"v{i}" for i in range(20)]
    for name in victims:
        setup.certs[name] = setup.ca.issue(name)
    lagging = tmp_path / "copy" / "index.txt"
    lagging.parent.mkdir()
    shutil.copy(setup.ca.index, lagging)
    first = signing_host(tmp_path, setup, redis_server.url, "a")
    second = edge = None
    try:
        until(lambda: "pre-producing for root" in first.log.read_text(), 20)
        second = signing_host(tmp_path, setup, redis_server.url, "b", index=lagging)
        filled(first, setup)
        edge = edge_host(tmp_path, setup, redis_server.url)
        until(lambda: ready(edge), 30)
        for name in victims:
            setup.ca.revoke(setup.certs[name], "-crl_reason", "superseded")
        revoked_at = time.monotonic()
        for name in victims:
            until(lambda n=name: status_of(edge.url, body_for(setup, n)) is REVOKED, 20)
        first.stop()  # its lease runs out in 15 s
        until(lambda: "behind the fleet's" in second.log.read_text(), 25)
        time.sleep(6)
        assert "pre-producing for root" not in second.log.read_text()
        for name in victims:
            assert status_of(edge.url, body_for(setup, name)) is REVOKED, name
        assert time.monotonic() > revoked_at
        copied = lagging.with_suffix(".new")
        shutil.copy(setup.ca.index, copied)
        copied.rename(lagging)  # B's copy catches up
        until(lambda: "pre-producing for root" in second.log.read_text(), 20)
        for name in victims[:5]:
            assert status_of(edge.url, body_for(setup, name)) is REVOKED, name
    finally:
        for running in (edge, second):
            if running is not None:
                running.stop()
        first.stop()
