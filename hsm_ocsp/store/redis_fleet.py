"""Answers shared by the hosts of a fleet through Redis (``[store] redis``).

Layout in Redis: one hash per (CA, serial), ``hsm-ocsp:s:`` + the serial's key prefix
(core/shared_answers.py), whose fields are the CertIDs' DER and values the records;
so withdrawing a serial is one DEL. Every put and withdrawal is also appended to one
stream, ``hsm-ocsp:changes`` (trimmed to about STREAM_LENGTH entries), which the other
hosts follow. ``hsm-ocsp:epoch`` names the Redis data set: when Redis comes back empty
a publisher writes a new epoch and publishes its whole store again, and followers
merge it.

Publisher: the signing host's side, a thread with a queue. Withdrawals are never
dropped (sent again until Redis takes them); puts are bounded, and puts lost to the
bound or to an empty Redis are made good by publishing the whole local store. Leases:
at most one signing host pre-produces a CA at a time (``hsm-ocsp:lease:{ca}``, taken
with SET NX and kept while its holder renews it). The follower (redis_follower.py)
copies Redis into a host's local store.
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis

from ..core.index import IndexSnapshot
from ..core.model import RevocationReason
from ..core.shared_answers import cert_id_of
from .lmdb_store import LmdbStore
from .vouch import preallocated_map

__all__ = ["BATCH", "EPOCH", "RETRY", "SERIAL", "STREAM", "Publisher", "Said", "connect"]

log = logging.getLogger("hsm_ocsp.fleet")
SERIAL = b"hsm-ocsp:s:"
STREAM = b"hsm-ocsp:changes"
EPOCH = b"hsm-ocsp:epoch"
SEQ = b"hsm-ocsp:seq"  # goes up with every batch a publisher writes
VIEW = "hsm-ocsp:view:"  # per CA: the farthest index view the signing hosts have seen
VIEW_TTL = 600  # seconds it is kept unless raised again (an index may shrink by hand)
_SEQ = struct.Struct("=q")
LEASE = "hsm-ocsp:lease:"
STREAM_LENGTH = 200_000
MAX_PUTS = 100_000  # puts waiting for Redis; beyond, the whole store is published again
BATCH = 500
LEASE_MS = 15_000
RENEW_EVERY = 5.0
RETRY = 1.0
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_RAISE_VIEW = """
local r = tonumber(redis.call('hget', KEYS[1], 'r') or '0') or 0
local n = tonumber(redis.call('hget', KEYS[1], 'n') or '0') or 0
if tonumber(ARGV[1]) > r then r = tonumber(ARGV[1]); redis.call('hset', KEYS[1], 'r', r) end
if tonumber(ARGV[2]) > n then n = tonumber(ARGV[2]); redis.call('hset', KEYS[1], 'n', n) end
redis.call('expire', KEYS[1], ARGV[3])
return {r, n}
"""


def fleet_view(snapshot: IndexSnapshot | None) -> tuple[int, int] | None:
    """How far an index has come: its revocations that can never be undone (all but
    certificateHold: a revocation never goes back) and its entries. Two hosts with the
    same index have the same view; a host whose copy lags has a lower one."""
    if snapshot is None:
        return None
    hold = RevocationReason.CERTIFICATE_HOLD
    final = sum(1 for r in snapshot.entries.values() if r is not None and r.reason is not hold)
    return final, len(snapshot.entries)


def connect(url: str) -> Any:
    """A client that never waits long: a Redis away is a fault to ride out, not to wait on.
    (Any: redis-py's replies are typed as unions of every kind of reply.)"""
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


def _split(key: bytes) -> tuple[bytes, bytes]:
    """(serial prefix, CertID DER) of a store key."""
    der = cert_id_of(key)
    return key[: len(key) - len(der)], der


class Said:
    """Logs a fault once, and its end once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False

    def failed(self, exc: Exception) -> None:
        if not self.failing:
            log.warning("%s: Redis not reachable (%s); trying again", self.what, exc)
            self.failing = True

    def ok(self) -> None:
        if self.failing:
            log.info("%s: Redis reachable again", self.what)
            self.failing = False


class Publisher:
    """Sends a signing host's puts and withdrawals to Redis, and holds its leases."""

    def __init__(
        self,
        client: Any,
        local: LmdbStore,
        cas: Sequence[str],
        view: Callable[[str], tuple[int, int] | None] = lambda ca: (0, 0),
        leads_changed: Callable[[], None] | None = None,
    ) -> None:
        """``view(ca)``: how far this host's index of ``ca`` has come (see ``fleet_view``);
        a host never leads a CA with a view older than one the fleet has seen.
        ``leads_changed``: called (in this publisher's thread) when the set of CAs it
        leads changes: another set to pre-produce."""
        self.client = client
        self.local = local
        self.view = view
        self._behind: dict[str, tuple[int, int]] = {}  # CAs not led for that, and the fleet's
        # The last value of hsm-ocsp:seq this host made (kept in state_dir across restarts):
        # a Redis that holds a lower one went back in time (restored from a snapshot).
        self._seq = preallocated_map(local.path.parent / "fleet-seq", _SEQ.size)
        self.host = f"{os.uname().nodename}:{os.getpid()}".encode()
        self.cas = tuple(cas)
        self.held: frozenset[str] = frozenset()
        self._withdrawals: collections.deque[bytes] = collections.deque()
        self._puts: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._republish = False
        self._epoch: bytes | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._said = Said("answer publisher")
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._raise_view = client.register_script(_RAISE_VIEW)
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._leads_changed = leads_changed

    def start(self) -> None:
        self._thread.start()

    def leads(self, ca: str) -> bool:
        return ca in self.held

    def put(self, key: bytes, value: bytes) -> None:
        if len(self._puts) >= MAX_PUTS:
            self._republish = True  # made good by publishing the whole store
            return
        self._puts.append((key, value))
        self._wake.set()

    def withdraw(self, prefixes: Iterable[bytes]) -> None:
        self._withdrawals.extend(prefixes)
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # Each turn, before its writes: the fleet hears at once that this host's
                # index has gone further (a host that lags must stop leading at once).
                self._keep_leases()
                self._check_epoch()
                self._send()
                self._said.ok()
            except redis.ResponseError as exc:  # Redis answers: a key of ours is junk
                self._repair(exc)
                self._stop.wait(RETRY)
                continue
            except redis.RedisError as exc:
                self._said.failed(exc)
                self.held = frozenset()  # a lease not renewed is not relied on
                self._stop.wait(RETRY)
                continue
            self._wake.wait(RENEW_EVERY)
            self._wake.clear()

    def _keep_leases(self) -> None:
        held = set()
        for ca in self.cas:
            key = LEASE + ca
            if not self._up_to_date(ca):
                self._release(keys=[key], args=[self.host])
                continue
            if self.client.set(key, self.host, nx=True, px=LEASE_MS) or self._renew(
                keys=[key], args=[self.host, LEASE_MS]
            ):
                held.add(ca)
        if held == self.held:
            return
        log.info("pre-producing for %s (leases held in Redis)", ", ".join(sorted(held)) or "no CA")
        self.held = frozenset(held)  # before the producer hears of it: it asks leads() at once
        if self._leads_changed is not None:
            self._leads_changed()  # another set of CAs to pre-produce

    def _up_to_date(self, ca: str) -> bool:
        """Whether this host's view of ``ca`` is as far as any the fleet has seen (which
        it raises to its own): a host whose index copy lags must not publish it."""
        mine = self.view(ca)
        if mine is None:  # not read yet
            return False
        raw = self._raise_view(keys=[VIEW + ca], args=[mine[0], mine[1], VIEW_TTL])
        fleet = (int(raw[0]), int(raw[1]))
        behind = mine[0] < fleet[0] or mine[1] < fleet[1]
        if behind and self._behind.get(ca) != fleet:
            log.warning(
                "CA %s: this host's index is behind the fleet's (revoked %d of %d, "
                "entries %d of %d): not pre-producing it",
                ca,
                mine[0],
                fleet[0],
                mine[1],
                fleet[1],
            )
        if behind:
            self._behind[ca] = fleet
        elif self._behind.pop(ca, None) is not None:
            log.info("CA %s: this host's index has caught up with the fleet's", ca)
        return not behind

    def _check_epoch(self) -> None:
        epoch = self.client.get(EPOCH)
        seen = int(_SEQ.unpack_from(self._seq)[0])
        try:
            now = int(self.client.get(SEQ) or 0)
        except ValueError:  # not a number: junk; counted again from nothing
            self.client.delete(SEQ)
            now = 0
        if epoch is not None and now < seen:  # restored from an older snapshot
            log.warning(
                "Redis went back in time (hsm-ocsp:seq %d, this host wrote %d): "
                "its answers are published again",
                now,
                seen,
            )
            self._forget_ours()
            self.client.set(EPOCH, os.urandom(8).hex().encode())
            epoch = None  # below: a new data set
        if epoch is None:  # an empty Redis (new, or restarted without its data)
            self.client.set(EPOCH, os.urandom(8).hex().encode(), nx=True)
            epoch = self.client.get(EPOCH)
            self._republish = True
        if epoch != self._epoch and self._epoch is not None:
            self._republish = True
        self._epoch = epoch

    def _repair(self, exc: redis.ResponseError) -> None:
        """A key of this namespace holds what it should not (another type, say: anyone
        with the Redis URL may write there). The key is deleted, the whole store is
        published again, and the leases are kept: only a Redis out of reach drops them."""
        log.warning("Redis refused a write (%s): repairing hsm-ocsp's own keys", exc)
        kinds = {STREAM: b"stream", EPOCH: b"string", SEQ: b"string"}
        kinds.update({(VIEW + ca).encode(): b"hash" for ca in self.cas})
        for key, kind in kinds.items():
            if self.client.type(key) not in (kind, b"none"):
                self.client.delete(key)
        self._republish = True

    def _forget_ours(self) -> None:
        """Delete every serial of the CAs this host leads from Redis: what a restored
        Redis holds of them may be older than what this host publishes again."""
        for ca in self.held:
            pattern = SERIAL + ca.encode() + b"\0*"
            names = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(names), BATCH):
                self.client.delete(*names[start : start + BATCH])

    def _count(self) -> None:
        """One more batch written: hsm-ocsp:seq goes up, and this host notes it."""
        _SEQ.pack_into(self._seq, 0, int(self.client.incr(SEQ)))

    def _send(self) -> None:
        while self._withdrawals:  # first: a withdrawal never waits behind puts
            batch = [self._withdrawals[i] for i in range(min(BATCH, len(self._withdrawals)))]
            pipe = self.client.pipeline(transaction=False)
            for prefix in batch:
                pipe.delete(SERIAL + prefix)
                pipe.xadd(
                    STREAM,
                    {b"o": b"w", b"p": prefix, b"h": self.host},
                    maxlen=STREAM_LENGTH,
                    approximate=True,
                )
            pipe.execute()
            self._count()
            for _ in batch:  # sent: only now off the queue
                self._withdrawals.popleft()
        if self._republish:  # the records only, then one marker: followers copy it all
            self._republish = False
            self._puts.clear()
            self._publish(self.local.items(), stream=False)
            self.client.xadd(
                STREAM, {b"o": b"r", b"h": self.host}, maxlen=STREAM_LENGTH, approximate=True
            )
            self._count()
        while self._puts:
            puts = [self._puts[i] for i in range(min(BATCH, len(self._puts)))]
            self._publish(puts)
            self._count()
            for _ in puts:
                self._puts.popleft()

    def _publish(self, items: Iterable[tuple[bytes, bytes]], *, stream: bool = True) -> None:
        """``stream=False`` (a republish): the records alone, so that they do not trim
        away the withdrawals sent just before them."""
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for key, value in items:
            prefix, der = _split(key)
            pipe.hset(SERIAL + prefix, der, value)
            if stream:
                entry = {b"o": b"p", b"p": prefix, b"f": der, b"v": value, b"h": self.host}
                pipe.xadd(STREAM, entry, maxlen=STREAM_LENGTH, approximate=True)
            count += 1
            if count % BATCH == 0:
                pipe.execute()
        pipe.execute()
