"""``token.sessions`` signer processes for the host's producer, each with its own
session on the token (and its own login, through the shared login gate: a refused PIN
is still tried once in all).

Before the producer, each worker had a signer process; now one process signs for the
host, so a token that signs in parallel (RSA on SoftHSM signs about as fast again
with a second process; network HSMs take many sessions) would be held to one
signature at a time. The pool sends each signature to the member with the fewest
waiting, among those that are up. It is a TokenProcess itself (its first member), so
the token's state, metrics and readiness read as before: the first member's.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..core.errors import TokenError
from .key_lookup import KeySpec
from .login_gate import LoginGate
from .signer_process import TokenProcess

__all__ = ["TokenPool"]


class TokenPool(TokenProcess):
    def __init__(
        self,
        module: str,
        pin: str,
        keys: list[KeySpec],
        *,
        sessions: int,
        sign_timeout: float,
        log_format: str,
        gate: LoginGate | None = None,
        keepalive: float = 0.0,
    ) -> None:
        super().__init__(module, pin, keys, sign_timeout=sign_timeout, log_format=log_format,
                         gate=gate, keepalive=keepalive)  # fmt: skip
        self.more = [
            TokenProcess(
                module,
                pin,
                keys,
                sign_timeout=sign_timeout,
                log_format=log_format,
                gate=gate,
                keepalive=keepalive,
            )
            for _ in range(sessions - 1)
        ]

    def __repr__(self) -> str:  # never show the PIN
        return f"TokenPool(module={self.module!r}, sessions={1 + len(self.more)})"

    async def sign(self, name: str, data: bytes) -> bytes:
        """On the member with the fewest signatures waiting (the first while none is up,
        so that a failure marks the pool down)."""
        members = [self, *(m for m in self.more if m.up)]
        member = min(members, key=lambda m: len(m._waiting))
        if member is self:
            return await super().sign(name, data)
        member.on_sign = self.on_sign
        member.on_recover = self.on_recover
        try:
            return await member.sign(name, data)
        except TokenError:
            return await super().sign(name, data)  # the first member says if it is down

    async def open(self) -> None:
        await super().open()
        for member in self.more:  # a member that cannot open now is started on its first use
            with contextlib.suppress(TokenError):
                await member.open()

    async def set_keys(self, keys: list[KeySpec]) -> None:
        await asyncio.gather(*(m.set_keys(keys) for m in self.more if m.up))
        await super().set_keys(keys)
        for member in self.more:
            if not member.up:  # it takes them when it starts again
                member.keys = dict(self.keys)
                member._setup = self._setup

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in self.more), return_exceptions=True)
        await super().aclose()
