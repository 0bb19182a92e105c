"""The access log: one line a request, text or JSON, as the logging set-up says."""

from __future__ import annotations

import logging
from time import perf_counter
from time import time as now
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from ..config.logs import JsonFormatter, TextFormatter, direct_handler
from ..core.reply import Reply
from .app_keys import CA_NAME, REPLY, STARTED

access_log = logging.getLogger("hsm_ocsp.access")


_NO_REPLY: tuple[str | None, tuple[str, ...], str, bool] = (None, (), "-", False)
_ACCESS_FORMAT = "%s ca=%s path_length=%d http=%d ocsp=%s certs=%s cached=%s %.3fms remote=%s"


class AccessLogger(AbstractAccessLogger):
    """One line a request to ``hsm_ocsp.access``; the root handler picks text or JSON.

    The line holds the CA name and the length of the path, never the path or
    body themselves (a GET path is the whole request, unbounded in size).

    This runs for every request, so what depends only on the reply is worked
    out once per cached reply, and when logging is set up as ``setup_logging``
    leaves it the line is written straight to the handler's stream, formatted
    by the handler's own formatter (``logs.direct_handler``): the ``logging``
    machinery in between cost about a third of a cached answer's CPU.
    """

    @staticmethod
    def _fields(reply: Reply | None) -> tuple[str | None, tuple[str, ...], str, bool]:
        if reply is None:
            return _NO_REPLY
        return reply.status_name, reply.cert_values, reply.cert_text, reply.cached

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            ca: str | None = request.get(CA_NAME)
            ocsp_status, certs, certs_text, cached = self._fields(request.get(REPLY))
            method = request.method
            path_length = len(request.raw_path)
            http_status = response.status
            started = request.get(STARTED)
            if started is not None:
                time = perf_counter() - started
            duration_ms = round(time * 1000, 3)
            remote = request.remote
            handler = direct_handler(logger)
            # A text line shows only the message; the fields are for JSON and handlers.
            text_only = handler is not None and not isinstance(handler.formatter, JsonFormatter)
            fields: dict[str, Any] = (
                {}
                if text_only
                else {
                    "method": method,
                    "ca": ca,
                    "path_length": path_length,
                    "http_status": http_status,
                    "ocsp_status": ocsp_status,
                    "cert_statuses": list(certs),
                    "cached": cached,
                    "duration_ms": duration_ms,
                    "remote": remote,
                }
            )
            args = (
                method,
                ca or "-",
                path_length,
                http_status,
                ocsp_status or "-",
                certs_text,
                "yes" if cached else "no",
                duration_ms,
                remote or "-",
            )
            if handler is None:
                record = logger.makeRecord(
                    logger.name, logging.INFO, "(unknown file)", 0, _ACCESS_FORMAT, args, None,
                    "(unknown function)", {"fields": fields},
                )  # fmt: skip
                logger.handle(record)
                return
            formatter = handler.formatter
            assert isinstance(formatter, TextFormatter)
            line = formatter.line(logger.name, "INFO", _ACCESS_FORMAT % args, fields, now())
            handler.acquire()
            try:
                handler.stream.write(line + handler.terminator)
                handler.flush()
            finally:
                handler.release()
        except Exception:  # a log line must never break a response
            access_log.exception("cannot write access log line")
