"""What one service takes at most: the defaults of the matching [server] settings,
defined once."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one service takes at most; the defaults of the matching [server] settings."""

    max_cert_ids: int = 64
    cache_entries: int = 100_000
    cache_bytes: int = 64 << 20
    # One sign queue a host now (the producer's): what two workers' queues held before.
    max_pending_signatures: int = 512
    # Answers for serials not in the index kept in the host's store (the oldest go).
    unknown_answers: int = 10_000


LIMITS = Limits()
