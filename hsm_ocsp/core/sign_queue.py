"""Signatures waiting for the token, in one queue per kind of request, served in turns.

The token signs one request at a time, and some requests cost a live signature
whatever a client does: a nonce, several CertIDs in one request, a serial the
CA never issued. A client can send any number of those. If they all waited in
one line, a flood of one kind would delay or crowd out everything else, above
all the first answer for an issued serial, which once signed serves every
client from the cache. So each kind waits in its own line, bounded to a share
of ``max_pending_signatures`` (beyond it: ``tryLater`` at once), and a free
place at the token goes to the kinds in turn: a flood of one kind takes at
most its turns, however long its line.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Awaitable, Callable

__all__ = ["Busy", "Kind", "SignQueue"]

# Signatures handed to the signer at once. At least WINDOW: enough to keep a token
# busy between two answers (2 cost ~14 % of nonce throughput on SoftHSM). More while
# the token is fast, as many as it signs in WINDOW_DELAY (at most MAX_WINDOW): with
# 4 a fast token idled between answers (P-256 on SoftHSM: 5,400 nonce answers a
# second with 4, 7,900 with 64, benchmarks/run.py --quick). Either way a request
# behind a flood waits for at most max(WINDOW signatures, WINDOW_DELAY) at the token,
# so the order is still decided here (benchmarks/signing_fairness.py).
WINDOW = 4
MAX_WINDOW = 64
WINDOW_DELAY = 0.02  # seconds
_MEASURE = 0.25  # seconds of completions the window is worked out from


class Kind(enum.Enum):
    ISSUED = "issued"  # one CertID of a serial in the index: the answer is cached
    UNKNOWN = "unknown"  # one CertID of a serial not in the index
    MULTI = "multi"  # several CertIDs
    NONCE = "nonce"  # signed for one client alone
    AHEAD = "ahead"  # the producer's own: a change, a refresh, the fill (no client waits)


# The share of max_pending_signatures each kind may hold (waiting or signing). The
# producer's line is short and takes its turn like the others: a client's signature
# never waits behind a whole fill.
SHARES = {Kind.ISSUED: 2, Kind.UNKNOWN: 6, Kind.MULTI: 6, Kind.NONCE: 6, Kind.AHEAD: 8}
# A client's signature that has not had its turn at the token in this long is answered
# tryLater: a slow token, busy with the fill, never keeps a client waiting for seconds.
MAX_WAIT = 2.0


class Busy(Exception):
    """This kind's line is full: answer tryLater."""


class SignQueue:
    def __init__(self, sign: Callable[[str, bytes], Awaitable[bytes]], max_pending: int) -> None:
        self._sign = sign
        self.limits = {kind: max(1, max_pending // share) for kind, share in SHARES.items()}
        if max_pending < 1:
            self.limits = dict.fromkeys(Kind, 0)
        self._held = dict.fromkeys(Kind, 0)  # waiting or signing, per kind
        self._lines: dict[Kind, collections.deque[asyncio.Future[None]]] = {
            kind: collections.deque() for kind in Kind
        }
        self._order = list(Kind)
        self._next = 0
        self._signing = 0
        self.window = WINDOW
        self._completed = 0
        self._since = time.monotonic()

    def pending(self, kind: Kind | None = None) -> int:
        return sum(self._held.values()) if kind is None else self._held[kind]

    async def sign(self, kind: Kind, name: str, data: bytes) -> bytes:
        """Sign when this kind's turn comes; Busy at once if its line is full."""
        if self._held[kind] >= self.limits[kind]:
            raise Busy(kind.value)
        self._held[kind] += 1
        try:
            if self._signing < self.window and not self._waiting():
                self._signing += 1  # a free place now: no line, no timer
            elif kind is Kind.AHEAD:
                await self._turn(kind)
            else:
                try:
                    async with asyncio.timeout(MAX_WAIT):
                        await self._turn(kind)
                except TimeoutError:
                    raise Busy(kind.value) from None
            try:
                return await self._sign(name, data)
            finally:
                self._signing -= 1
                self._measure()
                self._hand_on()
        finally:
            self._held[kind] -= 1

    def _waiting(self) -> bool:
        lines = self._lines
        return bool(
            lines[Kind.ISSUED]
            or lines[Kind.UNKNOWN]
            or lines[Kind.MULTI]
            or lines[Kind.NONCE]
            or lines[Kind.AHEAD]
        )

    async def _turn(self, kind: Kind) -> None:
        if self._signing < self.window and not self._waiting():
            self._signing += 1
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines[kind].append(place)
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():  # given a place, then cancelled
                self._signing -= 1
                self._hand_on()
            else:
                self._lines[kind].remove(place)
            raise

    def _measure(self) -> None:
        """Work the window out again from the signatures completed lately."""
        self._completed += 1
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed >= _MEASURE:
            rate = self._completed / elapsed
            self.window = max(WINDOW, min(MAX_WINDOW, int(rate * WINDOW_DELAY)))
            self._completed, self._since = 0, now

    def _hand_on(self) -> None:
        """Give free places to the waiting kinds, one each in turn."""
        while self._signing < self.window:
            for step in range(len(self._order)):
                kind = self._order[(self._next + step) % len(self._order)]
                if self._lines[kind]:
                    self._next = (self._next + step + 1) % len(self._order)
                    self._lines[kind].popleft().set_result(None)
                    self._signing += 1
                    break
            else:
                return
