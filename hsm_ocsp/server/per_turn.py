"""Work done once an event-loop turn instead of once a request.

Under load one loop turn answers many requests. Writing each request's log line
and metric samples as it is answered cost a system call, a lock and (with several
workers) a shared-file write per request; here they are kept and written together
at the end of the turn (``call_soon``), a few microseconds after the answers.

What it buys, measured with benchmarks/run.py (cached answers, A/B in the commit
messages that brought each): metrics written once a turn and histogram observations
batched, then log lines written once a turn, together raised cached throughput from
0.56-0.58 to 0.62-0.70 of a bare aiohttp server (POST). Nothing else in the server
relies on it: each part falls back to writing at once when no loop runs.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

from prometheus_client import Histogram


class TurnBufferedStream:
    """A log stream that writes the event loop's lines once a loop turn.

    Each access log line was a write() system call of its own. Under load one
    loop turn answers many requests: their lines now go out together at the end
    of the turn (``call_soon``), a few microseconds after they were logged.
    Lines from other threads, or while the loop does not run, are written at
    once, after the ones waiting.
    """

    def __init__(self, stream: TextIO, loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread and self._loop.is_running()

    def write(self, text: str) -> int:
        with self._lock:
            self._lines.append(text)
            first = len(self._lines) == 1
        if not self._on_loop():
            self.write_lines()
        elif first:
            self._loop.call_soon(self.write_lines)
        return len(text)

    def flush(self) -> None:
        """What ``StreamHandler`` calls after each line: on the loop, wait for the turn's end."""
        if not self._on_loop():
            self.write_lines()

    def write_lines(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            if lines:
                self.stream.write("".join(lines))
                self.stream.flush()


@contextlib.contextmanager
def log_lines_once_a_turn(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Give the root logger's stream handlers a :class:`TurnBufferedStream` meanwhile."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    streams = [(h, h.stream) for h in handlers]
    buffered = [TurnBufferedStream(stream, loop) for _, stream in streams]
    for (handler, _), stream in zip(streams, buffered, strict=True):
        handler.stream = stream
    try:
        yield
    finally:
        for (handler, original), stream in zip(streams, buffered, strict=True):
            stream.write_lines()
            handler.stream = original


def observe_all(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``: each bucket and the sum written once.

    prometheus_client has no call for many observations; this uses the
    histogram's own bucket bounds and values, as ``observe`` does. Those are
    private: a prometheus_client that lays them out otherwise gets ``observe``.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value
    total.inc(sum(values))
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class OncePerTurn:
    """Call ``fn`` at the end of this loop turn, once however often it is asked for
    during the turn; at once when no event loop runs (a direct call)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._scheduled = False

    def __call__(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._fn()
            return
        self._scheduled = True
        loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._fn()
