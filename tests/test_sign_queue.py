"""The sign queue's window: a fast token gets more signatures at once, a slow one
never more than WINDOW, so a request behind a flood waits little either way."""

from __future__ import annotations

import asyncio

from hsm_ocsp.core.sign_queue import MAX_WINDOW, WINDOW, Kind, SignQueue


class Signer:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.in_flight = 0
        self.most = 0

    async def sign(self, name: str, data: bytes) -> bytes:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(self.seconds)
        self.in_flight -= 1
        return b"signature"


async def _flood(queue: SignQueue, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def client() -> None:
        while loop.time() < stop:
            await queue.sign(Kind.NONCE, "k", b"data")

    await asyncio.gather(*(client() for _ in range(100)))


async def test_a_fast_token_gets_a_wider_window() -> None:
    signer = Signer(0.0)
    queue = SignQueue(signer.sign, max_pending=1000)
    await _flood(queue, 0.8)
    assert WINDOW < queue.window <= MAX_WINDOW
    assert signer.most > WINDOW


async def test_a_slow_token_keeps_the_narrow_window() -> None:
    signer = Signer(0.05)  # 20 a second each: at most 80 a second with 4 at once
    queue = SignQueue(signer.sign, max_pending=1000)
    await _flood(queue, 0.8)
    assert queue.window == WINDOW
    assert signer.most == WINDOW
