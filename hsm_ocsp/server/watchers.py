"""The application's background tasks: take up index changes, probe the token."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from aiohttp import web

from ..core.errors import HsmOcspError
from ..pkcs11.key_set import PROBE
from .app_state import METRICS, SOURCES, TOKEN
from .health import signers_out_of_validity, stale_indexes

log = logging.getLogger("hsm_ocsp.http")


WATCH_INTERVAL = 1.0


PROBE_INTERVAL = 10.0


async def watch_indexes(app: web.Application, wake: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), WATCH_INTERVAL)
        force = wake.is_set()
        wake.clear()
        for source in app[SOURCES].values():
            try:
                await loop.run_in_executor(None, functools.partial(source.check, force=force))
            except Exception:  # keep watching whatever one check did
                log.exception("index check for %s failed", source.path)
        stale = stale_indexes(app)
        invalid = signers_out_of_validity(app)
        for name in app[SOURCES]:
            app[METRICS].index_stale.labels(name).set(1 if name in stale else 0)
            app[METRICS].signer_ok.labels(name).set(0 if name in invalid else 1)


async def watch_token(app: web.Application) -> None:
    token = app[TOKEN]
    refused = app[METRICS].login_refused
    while True:
        await asyncio.sleep(1.0 if not token.up else PROBE_INTERVAL)
        refused.set(int(token.gate is not None and token.gate.refused() is not None))
        try:
            await token.sign(next(iter(token.keys)), PROBE)
        except HsmOcspError:
            pass
        except Exception:  # out of descriptors, say: keep watching, the token comes back
            log.exception("token probe failed")
