"""Log set-up: one stderr handler, text or JSON, and the access log's direct path.

Every request writes an access log line, and going through ``logging`` (a
record, the logger and handler chain with its filters and lock, the
formatter) cost about a third of a cached answer's CPU. When logging is set
up as :func:`setup_logging` leaves it, nothing in that chain can change a
line, so :func:`direct_handler` hands the access log the handler, whose
formatter writes the very same line from the parts (:meth:`TextFormatter.line`).
Any other set-up (a test's capture handler, a filter) takes the normal path.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "direct_handler", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class TextFormatter(logging.Formatter):
    """logging.Formatter with the date and time worked out once a second.

    ``time.strftime`` was a few microseconds of each line. The output is the
    same: the cached second plus the record's msecs.
    """

    _cached: tuple[int, str | None, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created, record.msecs, datefmt)

    def _time(self, created: float, msecs: float, datefmt: str | None) -> str:
        second = int(created)
        cached_second, cached_format, text = self._cached
        if second != cached_second or datefmt != cached_format:
            text = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._cached = (second, datefmt, text)  # one assignment: safe across threads
        if datefmt:
            return text
        return f"{text},{int(msecs):03d}"  # default_msec_format, "%s,%03d"

    @property
    def direct(self) -> bool:
        """True when :meth:`line` gives what ``format`` gives."""
        return self._fmt == TEXT_FORMAT and self.datefmt is None

    def line(
        self, name: str, levelname: str, message: str, fields: dict[str, Any], created: float
    ) -> str:
        """``format`` of a record with these parts (no exception), without the record."""
        msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord works it out
        return f"{self._time(created, msecs, None)} {levelname} {name}: {message}"


class JsonFormatter(TextFormatter):
    """One JSON object a line: time, level, logger, message and the record's ``fields``."""

    @property
    def direct(self) -> bool:
        return True

    def format(self, record: logging.LogRecord) -> str:
        extra = getattr(record, "fields", None)
        return self.line(
            record.name,
            record.levelname,
            record.getMessage(),
            extra if isinstance(extra, dict) else {},
            record.created,
        )

    def line(
        self, name: str, levelname: str, message: str, fields: dict[str, Any], created: float
    ) -> str:
        entry = {
            "time": self._time(created, 0.0, JSON_TIME_FORMAT),
            "level": levelname.lower(),
            "logger": name,
            "message": message,
        }
        entry.update(fields)
        return json.dumps(entry, separators=(",", ":"))


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _straight_to_root(logger: logging.Logger) -> bool:
    """Whether ``logger``'s lines reach the root through loggers without handlers or
    filters that all propagate."""
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        if current.handlers or current.filters or not current.propagate:
            return False
        current = current.parent
    return True


def direct_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one handler an INFO line of ``logger`` reaches, if nothing on the way can alter it.

    None unless the line goes, through loggers without handlers or filters, to a
    root whose only handler is a plain StreamHandler with one of our formatters
    and no filters: as :func:`setup_logging` leaves it.
    """
    root = logging.root
    if not _straight_to_root(logger) or root.filters or len(root.handlers) != 1:
        return None
    handler = root.handlers[0]
    if type(handler) is not logging.StreamHandler or handler.filters:
        return None
    formatter = handler.formatter
    if handler.level > logging.INFO or not isinstance(formatter, TextFormatter):
        return None
    return handler if formatter.direct else None
