"""What the application keeps for its handlers, watchers and reloads (aiohttp's typed keys)."""

from __future__ import annotations

from aiohttp import web

from ..config.model import Config
from ..core.service import OCSPService
from ..pkcs11.signer_process import TokenProcess
from .index_source import IndexSource
from .metrics import Metrics

SERVICE = web.AppKey("service", OCSPService)


SOURCES = web.AppKey("sources", dict[str, IndexSource])


TOKEN = web.AppKey("token", TokenProcess)


CONFIG = web.AppKey("config", Config)


METRICS = web.AppKey("metrics", Metrics)


RUNNING = web.AppKey("running", dict[str, Config])
