"""The follower: a thread that copies the fleet's Redis (redis_fleet.py) into this
host's LMDB store, a full copy first and then the change stream. An edge serves only
what it copies; a signing host copies what the other signing hosts produce (for the
CAs whose lease they hold), taking a record only if its own index says the same."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis import RedisError, ResponseError

from ..core.model import CertStatus
from ..core.record_check import MAX_KEY, MAX_RECORD, RecordChecker
from ..core.shared_answers import StoredAnswer, cert_id_of, decode, parse_key
from .copy_memory import CopyMemory
from .lmdb_store import LmdbStore
from .redis_fleet import BATCH, EPOCH, RETRY, SERIAL, STREAM, Said

__all__ = ["Follower"]

log = logging.getLogger("hsm_ocsp.fleet")
REVOKED = CertStatus.REVOKED


class Follower:
    """Copies Redis into this host's store: all of it, then each change as it comes."""

    def __init__(
        self,
        client: Any,
        local: LmdbStore,
        check: RecordChecker,
        memory: CopyMemory,
        skip: bytes | None = None,
        *,
        accept: Callable[[bytes, bytes], bool] | None = None,
        refused: Callable[[bytes], None] | None = None,
    ) -> None:
        """``check``: a record is copied only if its body is an answer signed for its
        CA that says what its header says; ``memory``: what was seen before, so that
        nothing older (or revoked before) is taken again, whatever Redis holds.
        ``accept`` (a signing host): a record is taken only if the host's own index says
        the same (else the serial is fetched again when its index changes: refetch).
        ``refused``: told of each key whose record was not taken (the lease holder
        publishes its own again: Redis must not keep an answer it refuses)."""
        self.client = client
        self.local = local
        self.check = check
        self.memory = memory
        self.refused = 0  # records not copied: unsigned, not what they claim, or older
        self._refused = refused or (lambda key: None)
        self.skip = skip  # a signing host's own entries: already in its store
        self.accept = accept
        self._refetch: collections.deque[bytes] = collections.deque()
        self.synced = False  # a full copy has been taken once
        self.skipped = 0  # entries in Redis that were not records (junk, wrong types)
        self.applied_ms = 0  # time (ms) of the last stream entry applied
        self.behind_ms = 0  # how far the last read found this host behind
        self.connected = False
        self._last = b"0-0"
        self._epoch: bytes | None = None
        self._stop = threading.Event()
        self._said = Said("answer follower")
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.memory.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except RedisError as exc:
                self.connected = False
                self._said.failed(exc)
                self._stop.wait(RETRY)

    def _follow(self) -> None:
        epoch = self.client.get(EPOCH)
        self.connected = True
        self._said.ok()
        if epoch is None:  # nothing published yet
            self._stop.wait(RETRY)
            return
        if not self.synced:  # at start (or a first copy cut short by a fault): all of it,
            self._copy_all()  # what this host holds may be from before any change
            self._epoch = epoch  # only now: a copy that failed half-way is done again
        elif epoch != self._epoch:  # Redis lost its data: read the new stream whole, its
            self._epoch, self._last = epoch, b"0-0"  # withdrawals first, then copy all at
            # the publisher's marker ("r")
        elif self._gap():
            self._copy_all()
        while self._refetch:
            prefix = self._refetch.popleft()
            found_now = self.client.hgetall(SERIAL + prefix)
            self._put([(prefix + der, value) for der, value in found_now.items()])
        found = self.client.xread({STREAM: self._last}, count=BATCH, block=200)
        if not found:
            self.behind_ms = 0  # nothing waiting: caught up
        for _, entries in found or ():
            self._apply(entries)

    def _gap(self) -> bool:
        """Entries this host has not read were trimmed away."""
        if self._last == b"0-0":
            return False
        first = self.client.xrange(STREAM, count=1)
        return bool(first) and _ms(first[0][0]) > _ms(self._last)

    def _copy_all(self) -> None:
        """Make the store what Redis holds: every record copied, and every serial that
        Redis no longer has withdrawn here (a withdrawal this host did not read)."""
        newest = self.client.xrevrange(STREAM, count=1)
        self._last = newest[0][0] if newest else b"0-0"
        batch: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        for name in self.client.scan_iter(match=SERIAL + b"*", count=1000):
            prefix = name[len(SERIAL) :]
            seen.add(prefix)
            for der, value in self._serial(name).items():
                batch.append((prefix + der, value))
            if len(batch) >= BATCH:
                self._put(batch)
                batch = []
        self._put(batch)
        gone: set[bytes] = set()
        if self.accept is None:  # an edge: Redis is its only truth (a signing host has its index)
            gone = {k[: len(k) - len(cert_id_of(k))] for k, _ in self.local.items()} - seen
            self._withdraw(sorted(gone))
        self.synced = True
        log.info(
            "answer store copied from Redis: %d records here, %d serials withdrawn",
            self.local.entries(),
            len(gone),
        )

    def _serial(self, name: bytes) -> dict[bytes, bytes]:
        """The records of one serial's hash; {} (counted) for a key that is not one of
        ours in shape (another type, an oversized entry): junk anyone with the Redis URL
        may have written never stops the copy, and never costs unbounded memory."""
        try:
            fields = self.client.hgetall(name) if len(name) <= MAX_KEY else {}
        except ResponseError:  # WRONGTYPE: not a hash
            self.skipped += 1
            return {}
        kept = {f: v for f, v in fields.items() if len(f) <= MAX_KEY and len(v) <= MAX_RECORD}
        self.skipped += len(fields) - len(kept)
        return kept

    def refetch(self, prefixes: Iterable[bytes]) -> None:
        """Fetch these serials' records again (this host's index has just changed them)."""
        self._refetch.extend(prefixes)

    def _put(self, items: list[tuple[bytes, bytes]]) -> None:
        checked = [(k, v, self.check.check(k, v)) for k, v in items]
        # Revocations first: a serial revoked in one CertID form is revoked in every form.
        checked.sort(key=lambda c: c[2] is None or c[2].record.cert_status is not REVOKED)
        taken: list[tuple[bytes, bytes]] = []
        revoked: set[bytes] = set()
        for key, value, found in checked:
            prefix = key[: len(key) - len(cert_id_of(key))]
            if found is None or not self._newer(key, prefix, found.record, revoked):
                self.refused += 1
                self._refused(key)
                continue
            if self.accept is not None and not self.accept(key, value):
                self._refused(key)
                continue
            taken.append((key, value))
            if found.record.cert_status is REVOKED and not found.hold:
                revoked.add(prefix)
        self.memory.revoked(revoked)  # before the copy: a crash between keeps the rule
        self.local.put_many(taken)

    def _newer(self, key: bytes, prefix: bytes, record: StoredAnswer, revoked: set[bytes]) -> bool:
        """Whether ``record`` goes back on nothing this host has held or seen (``revoked``:
        serials just seen revoked, not yet remembered)."""
        if prefix in revoked and record.cert_status is not REVOKED:
            return False
        held = self.local.get(key)
        before = None if held is None else decode(held)
        if before is not None and record.produced_at < before.produced_at:
            return False
        return self.memory.takes(key, prefix, record)

    def _withdraw(self, prefixes: list[bytes]) -> None:
        """Withdraw here, remembering what was held (an older answer is not taken again)."""
        held = [(k, r) for p in prefixes for k, v in self.local.items(p) if (r := decode(v))]
        self.memory.withdrawn(held)
        self.local.withdraw(prefixes)

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        puts: list[tuple[bytes, bytes]] = []
        for ident, fields in entries:
            if self.skip is not None and fields.get(b"h") == self.skip:
                pass
            elif fields.get(b"o") == b"w":
                self._put(puts)
                puts = []
                prefix = fields.get(b"p", b"")
                if len(prefix) <= MAX_KEY and parse_key(prefix) is not None:
                    self._withdraw([prefix])  # one serial's; never an empty or odd prefix
                else:
                    self.skipped += 1
            elif fields.get(b"o") == b"p":
                puts.append((fields.get(b"p", b"") + fields.get(b"f", b""), fields.get(b"v", b"")))
            elif fields.get(b"o") == b"r":  # a whole store was published again
                self._put(puts)
                self._copy_all()
                return
            self._last = ident
        self._put(puts)
        if entries:
            self.applied_ms = _ms(self._last)
            self.behind_ms = max(0, int(time.time() * 1000) - self.applied_ms)


def _ms(ident: bytes) -> int:
    return int(ident.split(b"-", 1)[0])
