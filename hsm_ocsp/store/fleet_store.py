"""A signing host's store in a fleet: the local LMDB store, with what it writes sent on
to Redis (redis_fleet.Publisher), and what the other signing hosts publish copied in
(redis_fleet.Follower): the host that holds a CA's lease pre-produces it for all.
Reads stay local. Withdrawals and new answers go to Redis only for the CAs whose lease
this host holds, so that two signing hosts with indexes a moment apart neither publish
an old status nor delete the other's new answers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..core.shared_answers import cert_id_of, of_unknown, parse_key
from .lmdb_store import LmdbStore
from .redis_fleet import Publisher
from .redis_follower import Follower

__all__ = ["FleetStore", "put_back"]


def put_back(local: LmdbStore, publisher: Publisher) -> Callable[[bytes], None]:
    """What a signing host's follower does with a record in Redis it would not copy (an
    old answer written back, bytes that are no answer): for a CA whose lease the host
    holds, it puts its own back (or withdraws the serial), so that Redis does not keep
    serving it to edges."""

    def refused(key: bytes) -> None:
        parsed = parse_key(key)
        if parsed is None or not publisher.leads(parsed[0]):
            return
        value = local.get(key)
        if value is not None:
            publisher.put(key, value)
        else:
            publisher.withdraw([key[: len(key) - _der_length(key)]])

    return refused


class FleetStore:
    def __init__(self, local: LmdbStore, publisher: Publisher, follower: Follower) -> None:
        """``follower`` made with ``refused=put_back(local, publisher)``."""
        self.local = local
        self.publisher = publisher
        self.follower = follower
        self.path = local.path
        self.identity = local.identity

    def start(self) -> None:
        self.publisher.start()
        self.follower.start()

    def get(self, key: bytes) -> bytes | None:
        return self.local.get(key)

    def generation(self) -> int:
        return self.local.generation()

    def put(self, key: bytes, value: bytes, still_true: Callable[[], bool] | None = None) -> bool:
        if not self.local.put(key, value, still_true):
            return False
        parsed = parse_key(key)  # an unknown serial's answer stays on this host
        if parsed is not None and self.publisher.leads(parsed[0]) and not of_unknown(value):
            self.publisher.put(key, value)
        return True

    def withdraw(self, prefixes: Iterable[bytes]) -> int:
        prefixes = list(prefixes)
        deleted = self.local.withdraw(prefixes)
        self._publish_withdrawals(prefixes)
        return deleted

    def forget(self, keys: Iterable[bytes]) -> int:
        return self.local.delete(keys)

    def delete(self, keys: Iterable[bytes]) -> int:
        """Records the indexes no longer say: gone here and, by serial, from the fleet."""
        keys = list(keys)
        self._publish_withdrawals(dict.fromkeys(k[: len(k) - _der_length(k)] for k in keys))
        return self.local.delete(keys)

    def _publish_withdrawals(self, prefixes: Iterable[bytes]) -> None:
        """Only the lease holder withdraws from the fleet: another signing host's index
        may be a moment ahead of it, and must not delete the answers it just signed."""
        ours = [
            p for p in prefixes if (k := parse_key(p)) is not None and self.publisher.leads(k[0])
        ]
        self.publisher.withdraw(ours)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self.local.items(prefix)

    def entries(self) -> int:
        return self.local.entries()

    def clear_stale_readers(self) -> int:
        return self.local.clear_stale_readers()

    def close(self) -> None:
        self.follower.close()
        self.publisher.close()
        self.local.close()


def _der_length(key: bytes) -> int:
    return len(cert_id_of(key))
