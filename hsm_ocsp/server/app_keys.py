"""Typed per-request storage shared by the HTTP handler, metrics and access log."""

from __future__ import annotations

from aiohttp import web

from ..core.reply import Reply

__all__ = ["CA_NAME", "REPLY", "STARTED"]

# The OCSP reply the handler sent, for metrics and the access log.
REPLY = web.RequestKey("ocsp_reply", Reply)
# The CA named in the URL path (``/{ca}/...``); "" for ``/``.
CA_NAME = web.RequestKey("ca", str)
# time.perf_counter() when an OCSP request's handler began: the access log's
# duration (uvloop's loop.time(), which aiohttp's own duration uses, moves once
# a loop turn, in milliseconds).
STARTED = web.RequestKey("hsm_ocsp_started", float)
