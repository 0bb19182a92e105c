"""What the application keeps for its handlers, watchers and reloads (aiohttp's typed keys)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from ..config.handoff import Handoff
from ..config.model import Config
from ..core.record_check import RecordChecker
from ..core.reply import Reply
from ..core.responder import Issuer
from ..pkcs11.token_pool import TokenPool
from ..store.vouch import Vouches
from .key_set import ProvenKeys
from .metrics import Metrics
from .producer_link import ProducerClient
from .production import Production
from .status_source import StatusSource


class Answers(Protocol):
    """What the routes ask for answers: the full service (core/service.py) where the
    token and indexes are, the front (core/front_service.py) in a producer's worker."""

    issuers: tuple[Issuer, ...]
    issuer_names: frozenset[str]

    async def respond(self, data: bytes, ca_name: str | None = None) -> Reply: ...

    def replace_issuers(
        self, issuers: Sequence[Issuer], check: RecordChecker | None = None
    ) -> None: ...

    def cache_bytes(self) -> int: ...


SERVICE = web.AppKey("service", Answers)


PRODUCTION = web.AppKey("production", Production)


PRODUCER = web.AppKey("producer", ProducerClient)


SOURCES = web.AppKey("sources", dict[str, StatusSource])


TOKEN = web.AppKey("token", TokenPool)


KEYS = web.AppKey("keys", ProvenKeys)  # the token as answers are signed with it


CONFIG = web.AppKey("config", Config)


METRICS = web.AppKey("metrics", Metrics)


RUNNING = web.AppKey("running", dict[str, Config])
# A child of a supervisor: the reload it accepted (config/handoff.py).
HANDOFF = web.AppKey("handoff", Handoff)


VOUCHES = web.AppKey("vouches", Vouches)
