"""The start of the process that holds the token and the indexes: the indexes loaded
while the keys are proven, and a token away at start tried again in the background."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..core.errors import TokenError

if TYPE_CHECKING:
    from .signing_host import SigningHost

__all__ = ["PROVE_EVERY", "load_and_prove", "prove_later"]

log = logging.getLogger("hsm_ocsp.http")
PROVE_EVERY = 2.0  # seconds between two tries of a token that was away at start


async def load_and_prove(host: SigningHost) -> list[asyncio.Task[None]]:
    """The indexes loaded while the keys are proven (in the signer processes); a token
    that is away is tried again in the background (the task returned), a wrong PIN or
    key stops the start."""
    loop = asyncio.get_running_loop()
    token = host.token
    proving = asyncio.create_task(host.keys.prove(host.config))
    try:
        for source in host.sources.values():
            await loop.run_in_executor(None, source.load)
    except BaseException:
        proving.cancel()
        await asyncio.gather(proving, return_exceptions=True)
        await token.aclose()
        raise
    try:
        await proving
    except TokenError as exc:
        if not exc.retryable:  # a wrong PIN, a key that is not there: the operator's
            await token.aclose()
            raise
        log.warning(
            "token not usable at start (%s): serving the store, answering tryLater "
            "for what needs a signature, and trying the token",
            exc,
        )
        return [asyncio.create_task(prove_later(host))]
    except BaseException:
        await token.aclose()
        raise
    return []


async def prove_later(host: SigningHost) -> None:
    """Prove the keys once the token is back; a wrong PIN or key ends the tries (said
    once: readiness names it)."""
    while True:
        await asyncio.sleep(PROVE_EVERY)
        try:
            await host.keys.prove(host.config, attempts=1)
        except TokenError as exc:
            if not exc.retryable:
                log.error("token: %s; not tried again until a reload or restart", exc)
                return
            continue
        log.info("token usable: keys proven, signing")
        return
