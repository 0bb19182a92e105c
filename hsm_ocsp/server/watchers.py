"""A signing host's background tasks: take up index changes, probe the token.

Each CA's index is watched by a task of its own whose looks at the file run on a
thread of their own: a file system that stops answering (a hard NFS mount) holds that
CA alone, whose answers then go unvouched (store/vouch.py), while every other CA's
revocations are still taken up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.errors import HsmOcspError
from .health import signers_out_of_validity, stale_indexes
from .key_set import PROBE
from .status_source import StatusSource

if TYPE_CHECKING:
    from .signing_host import SigningHost

log = logging.getLogger("hsm_ocsp.http")


WATCH_INTERVAL = 1.0


PROBE_INTERVAL = 10.0


async def watch_indexes(host: SigningHost, wake: asyncio.Event) -> None:
    """One watcher per CA; ``wake`` (a reload) makes each read its file again."""
    forced = {name: asyncio.Event() for name in host.sources}
    watchers = [
        asyncio.create_task(_watch_one(host, source, forced[name]))
        for name, source in host.sources.items()
    ]
    try:
        while True:
            await wake.wait()
            wake.clear()
            for event in forced.values():
                event.set()
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def _watch_one(host: SigningHost, source: StatusSource, force: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"index-{source.name}")
    settle = _settler(host, source.name)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(force.wait(), WATCH_INTERVAL)
            forced = force.is_set()
            force.clear()
            try:
                await loop.run_in_executor(thread, functools.partial(source.check, force=forced))
                await loop.run_in_executor(thread, settle)
            except Exception:  # keep watching whatever one check did
                log.exception("index check for %s failed", source.path)
            _report(host, source.name)
    finally:
        thread.shutdown(wait=False, cancel_futures=True)


def _settler(host: SigningHost, ca: str) -> Callable[[], None]:
    """After each look at the file: withdrawals that did not commit are tried again, and
    only once none is left does the producer vouch for the CA's stored answers."""
    production = host.production
    vouches = host.vouches
    source = host.sources[ca]

    def settle() -> None:
        if source.untaken:  # a version of the index is waiting to be taken up
            return
        if production is not None and not production.settle(ca):
            return
        if vouches is not None:
            vouches.vouch(ca)
        if production is not None:
            production.keep_version(ca)

    return settle


def _report(host: SigningHost, name: str) -> None:
    stale = stale_indexes(host)
    invalid = signers_out_of_validity(host)
    host.metrics.index_stale.labels(name).set(1 if name in stale else 0)
    host.metrics.signer_ok.labels(name).set(0 if name in invalid else 1)
    production = host.production
    if production is not None:
        host.metrics.withdrawals_pending.labels(name).set(production.unwithdrawn(name))
    ledger = host.sources[name].ledger
    if ledger is not None:
        host.metrics.revocations_kept.labels(name).set(ledger.kept.get(name, 0))


async def watch_token(host: SigningHost) -> None:
    token = host.token
    refused = host.metrics.login_refused
    while True:
        await asyncio.sleep(1.0 if not token.up else PROBE_INTERVAL)
        refused.set(int(token.gate is not None and token.gate.refused() is not None))
        try:
            await token.sign(next(iter(token.keys)), PROBE)
        except HsmOcspError:
            pass
        except Exception:  # out of descriptors, say: keep watching, the token comes back
            log.exception("token probe failed")
