"""The access log: one line a request, text or JSON, as the logging set-up says."""

from __future__ import annotations

import logging
from time import perf_counter
from time import time as now
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from ..core.logs import JsonFormatter, TextFormatter, direct_handler
from ..core.reply import Reply
from .app_keys import CA_NAME, REPLY, STARTED
from .per_turn import OncePerTurn, TurnBufferedStream

access_log = logging.getLogger("hsm_ocsp.access")


_NO_REPLY: tuple[str | None, tuple[str, ...], str, bool] = (None, (), "-", False)
_ACCESS_FORMAT = "%s ca=%s path_length=%d http=%d ocsp=%s certs=%s cached=%s %.3fms remote=%s"
_NO_FIELDS: dict[str, Any] = {}


class AccessLogger(AbstractAccessLogger):
    """One line a request to ``hsm_ocsp.access``; the root handler picks text or JSON.

    The line holds the CA name and the length of the path, never the path or
    body themselves (a GET path is the whole request, unbounded in size).

    This runs for every request, so what depends only on the reply is worked
    out once, on the Reply (core/reply.py), and when logging is set up as ``setup_logging``
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
            started = request.get(STARTED)
            if started is not None:
                time = perf_counter() - started
            handler = _TURN.handler_for(logger)
            if handler is None or isinstance(handler.formatter, JsonFormatter):
                _TURN.flush_soon()  # forgets the handler at the turn's end (no loop: now)
                self._log_fields(logger, handler, request, response, time)
                return
            # Text, as setup_logging leaves it: the parts now, the line at the turn's end.
            _TURN.entries.append(
                (
                    request.method,
                    request.get(CA_NAME),
                    len(request.raw_path),
                    response.status,
                    request.get(REPLY),
                    time,
                    request.remote,
                    now(),
                )
            )
            _TURN.flush_soon()  # at the turn's end (no loop: now)
        except Exception:  # a log line must never break a response
            access_log.exception("cannot write access log line")

    def _log_fields(
        self,
        logger: logging.Logger,
        handler: logging.StreamHandler[Any] | None,
        request: BaseRequest,
        response: StreamResponse,
        time: float,
    ) -> None:
        """The line with its fields: for JSON, or through ``logging`` (``handler`` None)."""
        ca = request.get(CA_NAME) or None  # "" when the path names no CA
        ocsp_status, certs, certs_text, cached = self._fields(request.get(REPLY))
        method, path_length = request.method, len(request.raw_path)
        http_status, duration_ms, remote = response.status, round(time * 1000, 3), request.remote
        fields: dict[str, Any] = {
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
                logger.name,
                logging.INFO,
                "(unknown file)",
                0,
                _ACCESS_FORMAT,
                args,
                None,
                "(unknown function)",
                {"fields": fields},
            )
            logger.handle(record)
            return
        formatter = handler.formatter
        assert isinstance(formatter, TextFormatter)
        _write(handler, formatter.line(logger.name, "INFO", _ACCESS_FORMAT % args, fields, now()))


_Entry = tuple[str, str | None, int, int, Reply | None, float, str | None, float]


class _TurnLines:
    """The text access lines of one event-loop turn, formatted and written at its end.

    Under load a turn answers many requests. Their lines are kept as parts and
    become one write at the turn's end (a direct call when no loop runs), with the
    handler looked up once a turn rather than once a line. Each line keeps the
    time it was logged at.
    """

    def __init__(self) -> None:
        self.logger: logging.Logger | None = None
        self.handler: logging.StreamHandler[Any] | None = None
        self.entries: list[_Entry] = []
        self.flush_soon = OncePerTurn(self.flush)

    def handler_for(self, logger: logging.Logger) -> logging.StreamHandler[Any] | None:
        """``direct_handler(logger)``, worked out once a turn."""
        if logger is not self.logger:
            self.flush()  # lines of another logger first
            self.logger, self.handler = logger, direct_handler(logger)
        return self.handler

    def flush(self) -> None:
        entries, self.entries = self.entries, []
        logger, handler = self.logger, self.handler
        self.logger = self.handler = None
        if not entries or logger is None or handler is None:
            return
        try:
            _write(handler, _lines(logger.name, handler, entries), end="")
            if type(handler.stream) is TurnBufferedStream:
                handler.stream.write_lines()  # this is the turn's end already
        except Exception:  # a log line must never break a response
            access_log.exception("cannot write access log lines")


def _lines(name: str, handler: logging.StreamHandler[Any], entries: list[_Entry]) -> str:
    """The text lines of ``entries``, as the handler's formatter writes them."""
    formatter = handler.formatter
    assert isinstance(formatter, TextFormatter)
    end = handler.terminator
    return "".join(
        formatter.line(
            name,
            "INFO",
            f"{method} ca={ca or '-'} path_length={path_length} http={status} "
            f"{_reply_text(reply)} {round(time * 1000, 3):.3f}ms remote={remote or '-'}",
            _NO_FIELDS,
            created,
        )
        + end
        for method, ca, path_length, status, reply, time, remote, created in entries
    )


_TURN = _TurnLines()


def write_access_lines() -> None:
    """Write the access lines still kept (when serving ends)."""
    _TURN.flush()


def _write(handler: logging.StreamHandler[Any], line: str, end: str | None = None) -> None:
    """``line`` to the handler's stream, as ``handler.emit`` would write it."""
    stream = handler.stream
    end = handler.terminator if end is None else end
    if type(stream) is TurnBufferedStream:  # its own lock; flushed at the turn's end
        stream.write(line + end)
        return
    handler.acquire()
    try:
        stream.write(line + end)
        handler.flush()
    finally:
        handler.release()


def _reply_text(reply: Reply | None) -> str:
    """``ocsp=... certs=... cached=...`` of ``reply`` (worked out once, on the Reply)."""
    return _NO_REPLY_TEXT if reply is None else reply.log_text


_NO_REPLY_TEXT = "ocsp=- certs=- cached=no"
