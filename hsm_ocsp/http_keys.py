"""Typed per-request storage shared by the HTTP handler, metrics and access log."""

from __future__ import annotations

from aiohttp import web

from .service import Reply

__all__ = ["CA_NAME", "REPLY"]

# The OCSP reply the handler sent, for metrics and the access log.
REPLY = web.RequestKey("ocsp_reply", Reply)
# The CA named in the URL path (``/{ca}/...``); absent for ``/``.
CA_NAME = web.RequestKey("ca", str)
