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
    # A worker's memo of stored answers it checked: the answers themselves are in the
    # store's pages, which every process shares; the memo saves the most asked ones a
    # read and a signature check, and is what each added worker costs (issue 31).
    front_memo_entries: int = 16_384
    front_memo_bytes: int = 8 << 20
    # Seconds a token call may take before the token is taken as failing (token.sign_timeout).
    sign_timeout: float = 5.0
    # Answers for serials not in the index kept in the host's store (the oldest go).
    unknown_answers: int = 10_000


LIMITS = Limits()
