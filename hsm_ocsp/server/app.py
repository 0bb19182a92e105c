"""The HTTP face: aiohttp application factory, OCSP GET/POST, health, caching headers."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import weakref
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..config.handoff import Accepted, Handoff
from ..config.model import Config, NonceMode, UnknownSerials
from ..config.pin import read_pin
from ..config.reload import read_reloadable
from ..core.errors import HsmOcspError
from ..core.index import IndexSnapshot
from ..core.record_check import RecordChecker, SignerKeys
from ..core.responder import Issuer
from ..core.service import OCSPService
from ..core.shared_answers import signer_fingerprint
from ..core.signing import SignatureScheme
from ..pkcs11.login_gate import LoginGate
from ..pkcs11.token_pool import TokenPool
from ..store.audit_log import AuditLog
from ..store.copy_memory import CopyMemory
from ..store.fleet_store import FleetStore
from ..store.ledger import LEDGER_NAME, Ledger
from ..store.lmdb_store import LmdbStore
from ..store.redis_fleet import Publisher, connect, fleet_view
from ..store.redis_follower import Follower
from ..store.taken_indexes import TakenIndexes
from ..store.vouch import VOUCH_FOR, Vouches
from .app_state import (
    CONFIG,
    HANDOFF,
    KEYS,
    METRICS,
    PRODUCTION,
    RUNNING,
    SERVICE,
    SOURCES,
    TOKEN,
    VOUCHES,
)
from .crl_source import CrlSource
from .health import healthz, problems, readyz
from .index_source import IndexSource
from .key_set import ProvenKeys, key_specs, take_keys
from .metrics import Metrics
from .producer_link import Respond, serve_link, socket_path
from .production import Production
from .routes import add_routes
from .start_up import load_and_prove
from .status_source import StatusSource, open_source
from .store_truth import StoreTruth
from .watchers import watch_indexes, watch_token

__all__ = ["build_token", "create_app", "issuers_of"]

log = logging.getLogger("hsm_ocsp.http")
READER_CHECK_EVERY = 2.0  # seconds between two looks for stale LMDB reader slots


def build_token(config: Config, pin: str | None = None, gate: LoginGate | None = None) -> TokenPool:
    """The token with one key a CA (not yet started), as ``token.sessions`` signer
    processes; the PIN read as the config says unless given."""
    pin = pin if pin is not None else read_pin(config.token, config.path)
    return TokenPool(config.token.module, pin, key_specs(config), sessions=config.token.sessions,
                     sign_timeout=config.token.sign_timeout, log_format=config.server.log_format,
                     gate=gate, keepalive=config.token.keepalive)  # fmt: skip


def issuers_of(config: Config) -> list[Issuer]:
    """Each CA as the service sees it, with every certificate that may sign for it."""
    return [
        Issuer.from_certificates(
            ca.name,
            ca.certificate,
            [cert for _, cert in ca.responder_certificates] or None,
            ca.validity,
            unknown_as_revoked=ca.unknown_serials is UnknownSerials.REVOKED,
            cert_id_hashes=ca.cert_id_hashes,
            include_ca_certificate=ca.includes_ca_certificate,
        )
        for ca in config.cas
    ]


def signer_keys(config: Config) -> SignerKeys:
    """Per CA, the key and scheme of each certificate that signs for it, by the
    fingerprint stored records carry: what a copied or served record is checked with."""
    keys: dict[str, dict[bytes, tuple[object, SignatureScheme]]] = {}
    for ca, issuer in zip(config.cas, issuers_of(config), strict=True):
        certificates = [c for _, c in ca.signing_certificates]  # in the issuer's order
        keys[ca.name] = {
            signer_fingerprint(signer): (cert.public_key(), ca.scheme_for(cert))
            for signer, cert in zip(issuer.signers, certificates, strict=True)
        }
    return keys


def create_app(
    config: Config,
    *,
    token: TokenPool | None = None,
    handle_signals: bool = False,
    pin: str | None = None,
    login_gate: LoginGate | None = None,
    role: str = "worker",
) -> web.Application:
    """The application of the process that holds the token and the indexes: a lone
    worker, or the producer of several (``role``, which then serves its workers on
    the link instead of HTTP). The token opens when the app starts."""
    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[CONFIG] = config
    # The revocations this host has seen (a revocation never goes back): in state_dir.
    ledger = (
        None if config.server.state_dir is None else Ledger(config.server.state_dir / LEDGER_NAME)
    )
    app[SOURCES] = {ca.name: open_source(ca, ledger, config.server.state_dir) for ca in config.cas}
    app[TOKEN] = token if token is not None else build_token(config, pin, login_gate)
    app[KEYS] = ProvenKeys(app[TOKEN])
    issuers = issuers_of(config)
    sources = app[SOURCES]
    metrics = app[METRICS] = _metrics(config, sources, app[TOKEN])
    store = _store(config, sources)  # opened after fork
    app[SERVICE] = service = OCSPService(
        issuers,
        functools.partial(_looked_at, sources),
        app[KEYS],
        max_cert_ids=config.server.max_cert_ids,
        echo_nonce=config.server.nonce is NonceMode.ECHO,
        cache_entries=config.server.cache_entries,
        cache_bytes=config.server.cache_bytes,
        max_pending_signatures=config.server.max_pending_signatures,
        events=metrics,
        shared=store,
        audit=_audit(config),
    )
    if store is not None:
        leads = store.publisher.leads if isinstance(store, FleetStore) else None
        assert config.server.state_dir is not None
        taken = TakenIndexes(config.server.state_dir, store.identity)
        for name, source in sources.items():  # a warm start reads its changes only
            found = taken.seed(name)
            if found is not None and isinstance(source, IndexSource):
                source.seed(*found)
        truth = StoreTruth(store, sources, taken)
        production = Production(config, service, sources, store, metrics, leads=leads,
                                truth=truth)  # fmt: skip
        production.attach()  # withdrawals from the first index change on
        app[PRODUCTION] = production
        assert config.server.state_dir is not None
        names = [ca.name for ca in config.cas]
        vouches = Vouches(config.server.state_dir, names, store.identity, producer=True)
        app[VOUCHES] = vouches
        app.on_cleanup.append(lambda _: _close(store, vouches))
    app[RUNNING] = {"config": config}  # what a reload replaces (the app itself is frozen)
    if role == "producer":  # a supervisor decides reloads: take what it accepted
        assert config.server.state_dir is not None
        app[HANDOFF] = Handoff(config.server.state_dir)
    app.cleanup_ctx.append(_lifecycle(handle_signals))
    app.cleanup_ctx.append(_producing(role, service.answer))
    add_routes(app, config, metrics, readyz, healthz)
    return app


def _metrics(config: Config, sources: dict[str, StatusSource], token: TokenPool) -> Metrics:
    """Metrics of this process, fed by the token and index hooks."""
    metrics = Metrics()
    for ca in config.cas:
        signer = max(
            (c for _, c in ca.responder_certificates or [(None, ca.certificate)]),
            key=lambda c: c.not_valid_after_utc,
        )  # the last to expire: the alert is on when the CA runs out of them
        metrics.add_ca(ca.name, signer.not_valid_after_utc)
        sources[ca.name].on_reload = metrics.index_reloaded(ca.name)
        sources[ca.name].on_error = metrics.index_failed(ca.name)
        source = sources[ca.name]
        if isinstance(source, CrlSource):
            source.on_refused = metrics.crl_refused(ca.name)
            source.on_reload = _with_crl_state(metrics, source, source.on_reload)
    token.on_state_change = metrics.token_state([ca.name for ca in config.cas])
    token.on_sign = metrics.token_signed
    token.on_recover = metrics.token_recovered
    token.on_state_change(token.up)
    return metrics


def _with_crl_state(
    metrics: Metrics, source: CrlSource, then: Callable[[IndexSnapshot], None] | None
) -> Callable[[IndexSnapshot], None]:
    def reloaded(snapshot: IndexSnapshot) -> None:
        metrics.crl_state(source.name, source.number, snapshot.valid_until)
        if then is not None:
            then(snapshot)

    return reloaded


async def _reload(app: web.Application, wake: asyncio.Event) -> None:
    """SIGHUP: re-read the configuration and the indexes; a lone worker also lets a
    refused login be tried again (with several workers the parent, which owns the
    login gate, does that). Files are read off the event loop."""
    gate = app[TOKEN].gate
    if gate is not None and app[CONFIG].server.workers == 1:
        gate.reset()
    running = app[RUNNING]["config"]
    ledgers = {s.ledger for s in app[SOURCES].values() if s.ledger is not None}
    for ledger in ledgers:  # an operator's ``revocations forget`` is taken up now
        await asyncio.get_running_loop().run_in_executor(None, ledger.reread)
    new, found = await _decided(app, running)
    if new is not None and app[RUNNING]["config"] is running:  # no newer reload won
        try:
            await take_keys(app[TOKEN], new)  # a new key: found and proven first
        except HsmOcspError as exc:  # (under a supervisor: it had proven the key)
            log.error("reload refused, the running configuration stays: %s", exc)
        else:
            app[RUNNING]["config"] = new
            if found is not None:
                app[HANDOFF].took(found)
            app[SERVICE].replace_issuers(issuers_of(new))
            if PRODUCTION in app:
                app[PRODUCTION].replaced_issuers()
            level = logging.DEBUG if found is not None else logging.INFO  # the supervisor said
            log.log(level, "configuration reloaded from %s", new.path)
    wake.set()


async def _decided(app: web.Application, running: Config) -> tuple[Config | None, Accepted | None]:
    """The configuration to take: under a supervisor, the one it accepted (if any, and
    not taken yet); alone, the file as it is now, decided here."""
    loop = asyncio.get_running_loop()
    if HANDOFF not in app:  # one process: its own decision
        return await loop.run_in_executor(None, read_reloadable, running), None
    found = await loop.run_in_executor(None, app[HANDOFF].new)
    if found is None:
        return None, None
    read = functools.partial(read_reloadable, running, quiet=True, text=found.text)
    return await loop.run_in_executor(None, read), found


class _Views:
    """Each CA's fleet view (redis_fleet.fleet_view), worked out once per index version."""

    def __init__(self, sources: dict[str, StatusSource]) -> None:
        self._sources = sources
        # Weakly: an index replaced by a reload must not stay in memory for this.
        self._known: dict[str, tuple[weakref.ref[IndexSnapshot], tuple[int, int] | None]] = {}

    def of(self, ca: str) -> tuple[int, int] | None:
        snapshot = self._sources[ca].snapshot
        if snapshot is None:
            return None
        known = self._known.get(ca)
        if known is None or known[0]() is not snapshot:
            known = self._known[ca] = (weakref.ref(snapshot), fleet_view(snapshot))
        return known[1]


def _audit(config: Config) -> AuditLog | None:
    """The audit trail of signatures, if ``[audit] path`` is set."""
    audit = config.audit
    if audit.path is None:
        return None
    return AuditLog(audit.path, max_bytes=audit.max_bytes, keep=audit.keep,
                    required=audit.required)  # fmt: skip


def _store(config: Config, sources: dict[str, StatusSource]) -> LmdbStore | FleetStore | None:
    """The host's answer store; in a fleet, what it writes goes on to Redis too."""
    if config.server.state_dir is None:
        return None
    local = LmdbStore(config.server.state_dir, discard_damaged=True)
    if config.store.redis is None:
        return local
    names = [ca.name for ca in config.cas]
    publisher = Publisher(connect(config.store.redis), local, names, view=_Views(sources).of)
    check, memory = RecordChecker(signer_keys(config)), CopyMemory(config.server.state_dir)
    follower = Follower(connect(config.store.redis), local, check, memory, skip=publisher.host)
    return FleetStore(local, publisher, follower)


async def _close(store: LmdbStore | FleetStore, vouches: Vouches) -> None:
    store.close()
    vouches.close()


def _looked_at(sources: dict[str, StatusSource], name: str) -> IndexSnapshot | None:
    """The CA's index, if its file was looked at lately: a look that hangs (a file
    system that stopped answering) must not leave an old index in service for ever."""
    source = sources[name]
    return source.snapshot if source.fresh(VOUCH_FOR) else None


def _lifecycle(handle_signals: bool):  # type: ignore[no-untyped-def]
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        token = app[TOKEN]
        background = await load_and_prove(app)
        wake = asyncio.Event()
        reloads: set[asyncio.Task[None]] = set()  # held until done, never collected midway

        def on_sighup() -> None:
            task = asyncio.create_task(_reload(app, wake))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        if handle_signals:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        tasks = [
            *background,
            asyncio.create_task(watch_indexes(app, wake)),
            asyncio.create_task(watch_token(app)),
        ]
        try:
            yield
        finally:
            if handle_signals:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in [*tasks, *reloads]:
                task.cancel()
            await asyncio.gather(*tasks, *reloads, return_exceptions=True)
            await token.aclose()

    return lifecycle


async def _clear_stale_readers(production: Production) -> None:
    """Every few seconds: reader slots of processes killed inside a read are freed, and
    the store's metrics are brought up to date (during a long fill, or a copy, too)."""
    while True:
        await asyncio.sleep(READER_CHECK_EVERY)
        production.report()
        cleared = await asyncio.to_thread(production.store.clear_stale_readers)
        if cleared:
            log.warning("answer store: freed %d reader slot(s) of processes that died "
                        "inside a read", cleared)  # fmt: skip


async def _start_production(
    app: web.Application, production: Production
) -> list[asyncio.Task[None]]:
    """The store reconciled with the indexes (before anyone reads it) and vouched for,
    then the background work: pre-production, stale reader slots freed."""
    loop = asyncio.get_running_loop()
    production.start(loop)  # and the publisher to the fleet's Redis, if any
    await loop.run_in_executor(None, production.reconcile)
    for ca in app[CONFIG].cas:  # the store says what the indexes just read say
        if production.settle(ca.name):
            app[VOUCHES].vouch(ca.name)
    tasks = [asyncio.create_task(_clear_stale_readers(production))]
    if app[CONFIG].producer.pre_produce:
        tasks.append(asyncio.create_task(production.run()))
    return tasks


def _producing(role: str, answer: Respond):  # type: ignore[no-untyped-def]
    """Once the indexes and the token are up: the store reconciled with the indexes,
    pre-production started, and (a producer) the link to the workers opened."""

    async def producing(app: web.Application) -> AsyncIterator[None]:
        production = app[PRODUCTION] if PRODUCTION in app else None
        tasks = [] if production is None else await _start_production(app, production)
        link = None
        if role == "producer":
            state_dir = app[CONFIG].server.state_dir
            assert state_dir is not None
            link = await serve_link(socket_path(state_dir), answer,
                                    lambda: problems(app))  # fmt: skip
        log.info("%s %d ready", role, os.getpid())
        try:
            yield
        finally:
            if link is not None:
                link.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if production is not None:
                await production.aclose()

    return producing
