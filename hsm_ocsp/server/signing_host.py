"""The process that holds the token and the indexes, as a plain object: a lone worker
wraps it in its HTTP application (app.py); the producer of several workers runs it
as it is and serves its workers on the link (producer.py). ``start`` and ``close``
are its whole life; nothing here knows of HTTP."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal

from ..config.handoff import Accepted, Handoff
from ..config.model import Config, NonceMode
from ..config.pin import read_pin
from ..config.reload import read_reloadable
from ..core.errors import HsmOcspError
from ..core.index import IndexSnapshot
from ..core.service import OCSPService
from ..pkcs11.login_gate import LoginGate
from ..pkcs11.token_pool import TokenPool
from ..store.fleet_store import FleetStore
from ..store.ledger import LEDGER_NAME, Ledger
from ..store.lmdb_store import LmdbStore
from ..store.taken_indexes import TakenIndexes
from ..store.vouch import VOUCH_FOR, Vouches
from .health import problems
from .host_events import HostEvents
from .host_store import open_audit, open_store
from .index_source import IndexSource
from .issuers import issuers_of
from .key_set import ProvenKeys, key_specs, take_keys
from .metrics import Metrics
from .producer_link import serve_link, socket_path
from .production import Production
from .start_up import load_and_prove
from .status_source import StatusSource, open_source
from .store_truth import StoreTruth
from .watchers import watch_indexes, watch_token

__all__ = ["SigningHost", "build_token"]

log = logging.getLogger("hsm_ocsp.http")
READER_CHECK_EVERY = 2.0  # seconds between two looks for stale LMDB reader slots


def build_token(
    config: Config, events: HostEvents, pin: str | None = None, gate: LoginGate | None = None
) -> TokenPool:
    """The token with one key a CA (not yet started), as ``token.sessions`` signer
    processes; the PIN read as the config says unless given."""
    pin = pin if pin is not None else read_pin(config.token, config.path)
    return TokenPool(
        config.token.module,
        pin,
        key_specs(config),
        sessions=config.token.sessions,
        sign_timeout=config.token.sign_timeout,
        log_format=config.server.log_format,
        gate=gate,
        keepalive=config.token.keepalive,
        events=events,
    )


class SigningHost:
    """Token, indexes, answer service, store and pre-production of one host.

    ``link``: the producer of several workers, which answers them over the link
    and takes the reloads its supervisor accepted; else a lone worker, which decides
    its reloads itself. ``handle_signals``: SIGHUP reloads.
    """

    def __init__(
        self,
        config: Config,
        *,
        pin: str | None = None,
        login_gate: LoginGate | None = None,
        handle_signals: bool = False,
        link: bool = False,
    ) -> None:
        self.config = config  # the running configuration: a reload replaces it
        self.role = "producer" if link else "worker"
        self.handle_signals = handle_signals
        self.metrics = _metrics(config)
        self.production: Production | None = None
        self.vouches: Vouches | None = None
        self.events = events = HostEvents(config, self.metrics, lambda: self.production)
        # The revocations this host has seen (a revocation never goes back): in state_dir.
        state_dir = config.server.state_dir
        ledger = None if state_dir is None else Ledger(state_dir / LEDGER_NAME)
        self.sources: dict[str, StatusSource] = {
            ca.name: open_source(ca, ledger, state_dir, events.source(ca.name)) for ca in config.cas
        }
        self.token = build_token(config, events, pin, login_gate)
        events.token_state(self.token.up)
        self.keys = ProvenKeys(self.token)
        self.store = open_store(config, self.sources, events)  # opened after fork
        self.service = OCSPService(
            issuers_of(config),
            self._looked_at,
            self.keys,
            max_cert_ids=config.server.max_cert_ids,
            echo_nonce=config.server.nonce is NonceMode.ECHO,
            cache_entries=config.server.cache_entries,
            cache_bytes=config.server.cache_bytes,
            max_pending_signatures=config.server.max_pending_signatures,
            events=self.metrics,
            shared=self.store,
            audit=open_audit(config),
        )
        # A supervisor decides reloads: its producer takes what it accepted.
        self.handoff = Handoff(state_dir) if link and state_dir is not None else None
        if self.store is not None:
            self._produce(self.store)
        self._tasks: list[asyncio.Task[None]] = []
        self._reloads: set[asyncio.Task[None]] = set()  # held until done, never collected
        self._wake = asyncio.Event()
        self._link: asyncio.Server | None = None
        self._started = False

    def _produce(self, store: LmdbStore | FleetStore) -> None:
        state_dir = self.config.server.state_dir
        assert state_dir is not None
        leads = store.publisher.leads if isinstance(store, FleetStore) else None
        taken = TakenIndexes(state_dir, store.identity)
        for name, source in self.sources.items():  # a warm start reads its changes only
            found = taken.seed(name)
            if found is not None and isinstance(source, IndexSource):
                source.seed(*found)
        truth = StoreTruth(store, self.sources, taken)
        self.production = Production(
            self.config, self.service, self.sources, store, self.metrics, leads=leads, truth=truth
        )
        names = [ca.name for ca in self.config.cas]
        self.vouches = Vouches(state_dir, names, store.identity, producer=True)

    def _looked_at(self, name: str) -> IndexSnapshot | None:
        """The CA's index, if its file was looked at lately: a look that hangs (a file
        system that stopped answering) must not leave an old index in service for ever."""
        source = self.sources[name]
        return source.snapshot if source.fresh(VOUCH_FOR) else None

    def problems(self) -> list[str]:
        """What keeps this host from answering now (/readyz, and the workers' over the link)."""
        return problems(self)

    # --- life -----------------------------------------------------------------

    async def start(self) -> None:
        """Indexes read and keys proven (a token away at start tried in the background),
        the store reconciled and vouched for, pre-production and the watchers running,
        and (a producer) the link open. A failure leaves nothing running."""
        self._started = True
        try:
            self._tasks += await load_and_prove(self)
            if self.handle_signals:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._tasks += [
                asyncio.create_task(watch_indexes(self, self._wake)),
                asyncio.create_task(watch_token(self)),
            ]
            if self.production is not None:
                self._tasks += await self._start_production(self.production)
            if self.role == "producer":
                assert self.config.server.state_dir is not None
                path = socket_path(self.config.server.state_dir)
                self._link = await serve_link(path, self.service.answer_for, self.problems)
        except BaseException:
            await self.close()
            raise
        log.info("%s %d ready", self.role, os.getpid())

    async def close(self) -> None:
        """Everything ``start`` began, ended in the reverse order; then the store."""
        if self._started:
            self._started = False
            if self._link is not None:
                self._link.close()
            if self.handle_signals:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            tasks = [*self._tasks, *self._reloads]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.production is not None:
                await self.production.aclose()
            await self.token.aclose()
        if self.store is not None:
            self.store.close()
        if self.vouches is not None:
            self.vouches.close()

    async def _start_production(self, production: Production) -> list[asyncio.Task[None]]:
        """The store reconciled with the indexes (before anyone reads it) and vouched for,
        then the background work: pre-production, stale reader slots freed."""
        loop = asyncio.get_running_loop()
        production.start(loop)  # and the publisher to the fleet's Redis, if any
        await loop.run_in_executor(None, production.reconcile)
        for ca in self.config.cas:  # the store says what the indexes just read say
            if production.settle(ca.name) and self.vouches is not None:
                self.vouches.vouch(ca.name)
        tasks = [asyncio.create_task(_clear_stale_readers(production))]
        if self.config.producer.pre_produce:
            tasks.append(asyncio.create_task(production.run()))
        return tasks

    # --- SIGHUP ---------------------------------------------------------------

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        """Re-read the configuration and the indexes; a lone worker also lets a refused
        login be tried again (with several workers the supervisor, which owns the login
        gate, does that). Files are read off the event loop."""
        gate = self.token.gate
        if gate is not None and self.role == "worker":
            gate.reset()
        running = self.config
        ledgers = {s.ledger for s in self.sources.values() if s.ledger is not None}
        for ledger in ledgers:  # an operator's ``revocations forget`` is taken up now
            await asyncio.get_running_loop().run_in_executor(None, ledger.reread)
        new, found = await self._decided(running)
        if new is not None and self.config is running:  # no newer reload won
            try:  # a new key: found, and proven first unless the supervisor did
                await take_keys(self.token, new, proven=found is not None)
            except HsmOcspError as exc:
                log.error("reload refused, the running configuration stays: %s", exc)
            else:
                self._take(new, found)
        self._wake.set()

    def _take(self, new: Config, found: Accepted | None) -> None:
        self.config = new
        if found is not None and self.handoff is not None:
            self.handoff.took(found)
        self.service.replace_issuers(issuers_of(new))
        if self.production is not None:
            self.production.replaced_issuers()
        level = logging.DEBUG if found is not None else logging.INFO  # the supervisor said
        log.log(level, "configuration reloaded from %s", new.path)

    async def _decided(self, running: Config) -> tuple[Config | None, Accepted | None]:
        """The configuration to take: under a supervisor, the one it accepted (if any, and
        not taken yet); alone, the file as it is now, decided here."""
        loop = asyncio.get_running_loop()
        if self.handoff is None:  # one process: its own decision
            return await loop.run_in_executor(None, read_reloadable, running), None
        found = await loop.run_in_executor(None, self.handoff.new)
        if found is None:
            return None, None
        read = functools.partial(read_reloadable, running, quiet=True, text=found.text)
        return await loop.run_in_executor(None, read), found


def _metrics(config: Config) -> Metrics:
    metrics = Metrics()
    for ca in config.cas:
        metrics.add_ca(ca)
    return metrics


async def _clear_stale_readers(production: Production) -> None:
    """Every few seconds: reader slots of processes killed inside a read are freed, and
    the store's metrics are brought up to date (during a long fill, or a copy, too)."""
    while True:
        await asyncio.sleep(READER_CHECK_EVERY)
        production.report()
        cleared = await asyncio.to_thread(production.store.clear_stale_readers)
        if cleared:
            log.warning(
                "answer store: freed %d reader slot(s) of processes that died inside a read",
                cleared,
            )
