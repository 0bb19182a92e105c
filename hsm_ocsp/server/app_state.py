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
from .metrics import Metrics
from .producer_link import ProducerClient
from .signing_host import SigningHost


class Answers(Protocol):
    """What the routes ask for answers: the front door (core/front.py) with its sources:
    the signing service alone in a lone worker (core/service.py), the store then the
    producer in a producer's worker."""

    @property
    def issuer_names(self) -> frozenset[str]: ...

    async def respond(self, data: bytes, ca_name: str | None = None) -> Reply: ...

    def replace_issuers(
        self, issuers: Sequence[Issuer], check: RecordChecker | None = None
    ) -> None: ...


SERVICE = web.AppKey("service", Answers)


# A lone worker: the signing host behind its HTTP application (signing_host.py).
HOST = web.AppKey("host", SigningHost)


PRODUCER = web.AppKey("producer", ProducerClient)


CONFIG = web.AppKey("config", Config)


METRICS = web.AppKey("metrics", Metrics)


# A producer's worker: the configuration running, and the reloads its supervisor accepted.
RUNNING = web.AppKey("running", dict[str, Config])
HANDOFF = web.AppKey("handoff", Handoff)
