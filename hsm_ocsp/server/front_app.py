"""The application of a worker when the host has a producer: it holds no token and no
index. Answers come from the host's store, else from the producer over the link."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from ..config.handoff import Handoff
from ..config.model import Config, NonceMode
from ..config.reload import read_reloadable
from ..core.front import Front
from ..core.limits import LIMITS
from ..core.record_check import RecordChecker
from ..core.store_source import StoreSource
from ..store.lmdb_store import LmdbStore
from ..store.vouch import Vouches
from .app_state import CONFIG, HANDOFF, METRICS, PRODUCER, RUNNING, SERVICE
from .health import answer, health
from .issuers import issuers_of, signer_keys
from .metrics import Metrics
from .producer_link import ProducerClient, socket_path
from .routes import add_routes

__all__ = ["create_front_app"]

log = logging.getLogger("hsm_ocsp.http")


def create_front_app(config: Config, *, handle_signals: bool = False) -> web.Application:
    state_dir = config.server.state_dir
    assert state_dir is not None  # serve makes one when the config has none
    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[CONFIG] = config
    metrics = app[METRICS] = Metrics()
    for ca in config.cas:
        metrics.add_ca(ca, token=False)
    store = LmdbStore(state_dir)
    # A signing host's workers serve the store only while its producer vouches for it;
    # an edge has no index to vouch with (its answers are verified copies: see replica).
    names = [ca.name for ca in config.cas]
    vouches = Vouches(state_dir, names, store.identity) if config.signing else None
    producer = app[PRODUCER] = ProducerClient(socket_path(state_dir))
    entries = min(config.server.cache_entries, LIMITS.front_memo_entries)
    stored = StoreSource(
        store,
        # An edge cannot sign: it answers a nonce request from its copy, without the
        # nonce (RFC 9654 lets a responder leave it out).
        echo_nonce=config.server.nonce is NonceMode.ECHO and config.signing,
        cache_entries=entries,
        cache_bytes=min(config.server.cache_bytes, LIMITS.front_memo_bytes),
        events=metrics,
        vouched=None if vouches is None else vouches.vouched,
        check=RecordChecker(signer_keys(config)),
    )
    # The store first, then the producer for what the store cannot answer.
    app[SERVICE] = Front(
        issuers_of(config),
        (stored, producer),
        max_cert_ids=config.server.max_cert_ids,
        memo_entries=entries,
    )
    app[RUNNING] = {"config": config}
    app[HANDOFF] = Handoff(state_dir)
    app.cleanup_ctx.append(_lifecycle(store, handle_signals))
    if vouches is not None:
        app.on_cleanup.append(lambda _: _close(vouches))
    add_routes(app, config, metrics, _readyz, _healthz)
    return app


async def _readyz(request: web.Request) -> web.Response:
    """Ready when the producer is."""
    return answer(await request.app[PRODUCER].problems())


async def _healthz(request: web.Request) -> web.Response:
    return health(await request.app[PRODUCER].problems())


async def _reload(app: web.Application) -> None:
    """SIGHUP: the new certificates and rules the supervisor accepted, if any (the
    producer takes up keys and indexes)."""
    running, loop = app[RUNNING]["config"], asyncio.get_running_loop()
    found = await loop.run_in_executor(None, app[HANDOFF].new)
    if found is None:  # refused, or taken already: the supervisor said which
        return
    read = functools.partial(read_reloadable, running, quiet=True, text=found.text)
    new = await loop.run_in_executor(None, read)
    if new is not None and app[RUNNING]["config"] is running:
        app[RUNNING]["config"] = new
        app[HANDOFF].took(found)
        app[SERVICE].replace_issuers(issuers_of(new), RecordChecker(signer_keys(new)))
        log.debug("configuration %s taken from %s", found.digest[:16], new.path)


async def _close(vouches: Vouches) -> None:
    vouches.close()


def _lifecycle(store: LmdbStore, handle_signals: bool):  # type: ignore[no-untyped-def]
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()

        def on_sighup() -> None:
            task = asyncio.create_task(_reload(app))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        if handle_signals:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        log.info("worker %d ready", os.getpid())
        try:
            yield
        finally:
            if handle_signals:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in reloads:
                task.cancel()
            await asyncio.gather(*reloads, return_exceptions=True)
            await app[PRODUCER].aclose()
            store.close()

    return lifecycle
