"""An edge's producer: a host without a token and without indexes. It copies the
fleet's answers from Redis into the host's store (store/redis_fleet.py) and answers its
workers' questions: what the store lacks is tryLater here, as no signature can be made.
While Redis is away the workers keep serving the local copy; the follower catches up
when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from ..config.model import Config
from ..core.errors import EXIT_OK
from ..core.ocsp import OCSPRequest
from ..core.record_check import RecordChecker
from ..core.reply import Reply
from ..store.copy_memory import CopyMemory
from ..store.lmdb_store import LmdbStore
from ..store.redis_fleet import connect
from ..store.redis_follower import Follower
from .event_loop import new_event_loop
from .issuers import signer_keys
from .metrics import Metrics
from .producer_link import TRY_LATER, serve_link, socket_path

__all__ = ["run_replica"]

log = logging.getLogger("hsm_ocsp.producer")


async def _nothing_to_sign(ca: str, request: OCSPRequest) -> Reply:
    return TRY_LATER


async def _replicate(config: Config) -> None:
    assert config.server.state_dir is not None and config.store.redis is not None
    store = LmdbStore(config.server.state_dir, discard_damaged=True)
    memory = CopyMemory(config.server.state_dir)
    check = RecordChecker(signer_keys(config))
    follower = Follower(connect(config.store.redis), store, check, memory)
    follower.start()
    metrics = Metrics()

    def problems() -> list[str]:
        return [] if follower.synced else ["store: not yet copied from Redis"]

    link = await serve_link(socket_path(config.server.state_dir), _nothing_to_sign, problems)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("producer %d ready (an edge: answers copied from Redis)", os.getpid())
    try:
        while not stop.is_set():
            metrics.replication_connected.set(int(follower.connected))
            metrics.replication_lag.set(follower.behind_ms / 1000)
            metrics.store_records.set(store.entries())
            metrics.replication_refused.set(follower.refused + follower.skipped)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        link.close()
        follower.close()
        store.close()


def run_replica(config: Config) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload without indexes or keys
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_replicate(config))
    return EXIT_OK
