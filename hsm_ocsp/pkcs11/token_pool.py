"""``token.sessions`` signer processes for the host's producer, each with its own
session on the token (and its own login, through the shared login gate: a refused PIN
is still tried once in all).

One process signs for the host, so a token that signs in parallel (RSA on SoftHSM signs
about as fast again with a second process; network HSMs take many sessions) would be
held to one signature at a time. The pool has its members and sends each signature to
the one with the fewest waiting, among those that are up. The token's state (up, the
last error, what readiness and the metrics read) is the first member's: while it is
down the pool is, and a signature none of the others can make goes to it, so that a
failure marks the pool down.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..core.errors import TokenError
from .key_lookup import KeySpec
from .login_gate import LoginGate
from .signer_process import TokenProcess
from .token_state import SignsOnly, TokenEvents

__all__ = ["TokenPool"]


class TokenPool:
    def __init__(
        self,
        module: str,
        pin: str,
        keys: list[KeySpec],
        *,
        sessions: int = 1,
        sign_timeout: float,
        log_format: str,
        gate: LoginGate | None = None,
        keepalive: float = 0.0,
        events: TokenEvents | None = None,
    ) -> None:
        """``events``: told of every signature, and of the first member's up and down
        (the token's state, as the properties below read it)."""
        others = None if events is None else SignsOnly(events)
        self.members = [
            TokenProcess(
                module,
                pin,
                keys,
                sign_timeout=sign_timeout,
                log_format=log_format,
                gate=gate,
                keepalive=keepalive,
                events=events if number == 0 else others,
            )
            for number in range(max(1, sessions))
        ]
        self.first = self.members[0]

    def __repr__(self) -> str:  # never show the PIN
        return f"TokenPool(module={self.module!r}, sessions={len(self.members)})"

    # --- the token's state: the first member's --------------------------------------

    @property
    def up(self) -> bool:
        return self.first.up

    @property
    def last_error(self) -> str | None:
        return self.first.last_error

    @property
    def module(self) -> str:
        return self.first.module

    @property
    def gate(self) -> LoginGate | None:
        return self.first.gate

    @property
    def keys(self) -> dict[str, KeySpec]:
        return self.first.keys

    @property
    def sign_timeout(self) -> float:
        return self.first.sign_timeout

    def algorithm_identifier(self, name: str) -> bytes:
        return self.first.algorithm_identifier(name)

    # --- calls --------------------------------------------------------------------------

    async def sign(self, name: str, data: bytes) -> bytes:
        """On the member with the fewest signatures waiting (the first while no other is
        up, so that a failure marks the pool down)."""
        members = [self.first, *(m for m in self.members[1:] if m.up)]
        member = min(members, key=lambda m: m.waiting)
        if member is self.first:
            return await member.sign(name, data)
        try:
            return await member.sign(name, data)
        except TokenError:
            return await self.first.sign(name, data)  # the first member says if it is down

    async def open(self) -> None:
        await self.first.open()
        for member in self.members[1:]:  # one that cannot open now starts on its first use
            with contextlib.suppress(TokenError):
                await member.open()

    async def set_keys(self, keys: list[KeySpec]) -> None:
        others = self.members[1:]
        await asyncio.gather(*(m.set_keys(keys) for m in others if m.up))
        await self.first.set_keys(keys)
        for member in others:
            if not member.up:  # it takes them when it starts again
                member.take_keys_at_start(keys)

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in self.members), return_exceptions=True)
