"""Observability adapter: Prometheus metrics and the access log.

Metric names are part of the interface (README lists them; the alerts use them).
Labels take only bounded values: CA
names from the config, the HTTP method folded to GET/POST/HEAD/other, the
OCSP response status by its RFC 6960 name (or ``http_error`` when no OCSP
response was sent), certificate and cache-lookup results from fixed sets.

With ``workers > 1`` the parent calls :func:`prepare_multiprocess` before it
forks: every worker then writes its samples to files in one directory
(prometheus-client's multiprocess mode) and any worker's ``/metrics`` sums
all of them. Counter and histogram files of a dead worker stay, so its counts
are not lost; :func:`process_dead` drops only its ``live*`` gauge values.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from time import perf_counter
from time import time as now
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from . import __version__
from .http_keys import CA_NAME, REPLY
from .index import IndexSnapshot
from .logs import JsonFormatter, TextFormatter, direct_handler
from .model import CertStatus, OCSPResponseStatus
from .service import Events, Reply

__all__ = [
    "METRICS_PATH",
    "MULTIPROC_ENV",
    "AccessLogger",
    "Metrics",
    "create_metrics_app",
    "prepare_multiprocess",
    "process_dead",
    "remove_multiprocess_dir",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
PREFIX = "hsm_ocsp_"

# 0.1 ms (a cached answer) to 10 s (a token that hangs until sign_timeout).
BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

OCSP_STATUS_NAMES = {
    OCSPResponseStatus.SUCCESSFUL: "successful",
    OCSPResponseStatus.MALFORMED_REQUEST: "malformedRequest",
    OCSPResponseStatus.INTERNAL_ERROR: "internalError",
    OCSPResponseStatus.TRY_LATER: "tryLater",
    OCSPResponseStatus.SIG_REQUIRED: "sigRequired",
    OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
}
HTTP_ERROR = "http_error"  # no OCSP response sent: 404, 405, 413, 500
METHODS = ("GET", "POST", "HEAD")
OTHER_METHOD = "other"
CACHE_RESULTS = ("hit", "miss", "stale")
INDEX_STATUSES = ("V", "R", "E")

access_log = logging.getLogger("hsm_ocsp.access")
# time.perf_counter() when an OCSP request's handler began: the access log's
# duration (uvloop's loop.time(), which aiohttp's own duration uses, moves once
# a loop turn, in milliseconds).
STARTED = web.RequestKey("hsm_ocsp_started", float)


class Metrics(Events):
    """Every hsm_ocsp_ metric of one process, fed by the service, token and indexes.

    Each instance has its own registry, so tests may build many applications
    in one process. In multiprocess mode the values also go to the shared
    files and :meth:`exposition` reads those instead.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "OCSP HTTP requests by method and OCSP response status.",
            ["method", "ocsp_status"],
            registry=r,
        )
        self.cert_statuses = Counter(
            PREFIX + "cert_status_total",
            "Certificate statuses answered (one per SingleResponse).",
            ["status"],
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from the start of the handler to the response of an OCSP request.",
            buckets=BUCKETS,
            registry=r,
        )
        self.sign_duration = Histogram(
            PREFIX + "sign_duration_seconds",
            "Time of the PKCS#11 signing call alone (responses and key probes).",
            buckets=BUCKETS,
            registry=r,
        )
        self.sign_errors = Counter(
            PREFIX + "sign_errors_total",
            "Responses that could not be signed (token failure or too many pending).",
            registry=r,
        )
        self.cache_lookups = Counter(
            PREFIX + "cache_lookups_total",
            "Pre-signed response cache look-ups by result (hit, miss, stale).",
            ["result"],
            registry=r,
        )
        # Gauge modes for several workers: the least healthy living worker
        # decides token_up (an alert must fire if any worker cannot sign);
        # index gauges take the newest living value (all workers read the same
        # file, the newest reload is the truth); static values take the max.
        self.token_up = Gauge(
            PREFIX + "token_up",
            "1 while the CA's key on the token can sign, else 0.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.index_entries = Gauge(
            PREFIX + "index_entries",
            "Entries in the CA's index by status letter (V, R, E).",
            ["ca", "status"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.index_last_reload = Gauge(
            PREFIX + "index_last_reload_timestamp_seconds",
            "Unix time the CA's index was last loaded successfully.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.unrefreshed = Counter(
            PREFIX + "cache_served_unrefreshed_total",
            "Cached answers served past their refresh time, before their nextUpdate, "
            "because the refresh could not be signed (token down or busy).",
            registry=r,
        )
        self.login_refused = Gauge(
            PREFIX + "token_login_refused",
            "1 while logins are stopped because the token refused the PIN (until SIGHUP).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.signer_ok = Gauge(
            PREFIX + "responder_certificate_valid",
            "1 while the certificate that signs the CA's answers is valid now, else 0 "
            "(then the CA answers tryLater).",
            ["ca"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.capped = Gauge(
            PREFIX + "validity_capped",
            "1 once answers' nextUpdate had to be cut to the signing certificate's notAfter.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.index_stale = Gauge(
            PREFIX + "index_stale",
            "1 while the CA's index file has not been taken up for longer than "
            "server.index_stale_after (the last good index is still served), else 0.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.index_reload_errors = Counter(
            PREFIX + "index_reload_errors_total",
            "Index reloads refused (the last good index stays in service).",
            ["ca"],
            registry=r,
        )
        self.responder_expiry = Gauge(
            PREFIX + "responder_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate that signs the CA's responses, as Unix time.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.build_info = Gauge(
            PREFIX + "build_info",
            "Always 1; the label carries the hsm-ocsp version.",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(__version__).set(1)
        for result in CACHE_RESULTS:
            self.cache_lookups.labels(result)
        for status in CertStatus:
            self.cert_statuses.labels(status.value)
        # Children looked up once: labels() costs more than inc() on the hot path.
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._cert_children = {s: self.cert_statuses.labels(s.value) for s in CertStatus}
        self._cache_children = {r: self.cache_lookups.labels(r) for r in CACHE_RESULTS}
        # Counted, not yet written (see _flush_soon).
        self._done: list[tuple[str, Reply | None, float]] = []
        self._lookups: list[str] = []
        self._flush_scheduled = False

    # --- sources of values ----------------------------------------------

    def add_ca(self, name: str, signer_not_after: dt.datetime) -> None:
        """A CA served by this process and the notAfter of its signing certificate."""
        self.responder_expiry.labels(name).set(signer_not_after.timestamp())
        self.token_up.labels(name).set(0)
        self.index_stale.labels(name).set(0)
        self.index_reload_errors.labels(name)

    def token_state(self, ca_names: Iterable[str]) -> Callable[[bool], None]:
        """A ``Token.on_state_change`` callback that sets token_up for ``ca_names``."""
        gauges = [self.token_up.labels(name) for name in ca_names]

        def changed(up: bool) -> None:
            for gauge in gauges:
                gauge.set(1 if up else 0)

        return changed

    def index_reloaded(self, ca: str) -> Callable[[IndexSnapshot], None]:
        """An ``IndexSource.on_reload`` callback for CA ``ca``."""
        entries = {s: self.index_entries.labels(ca, s) for s in INDEX_STATUSES}
        last = self.index_last_reload.labels(ca)

        def reloaded(snapshot: IndexSnapshot) -> None:
            for status, gauge in entries.items():
                gauge.set(snapshot.counts.get(status, 0))
            last.set(time.time())

        return reloaded

    def index_failed(self, ca: str) -> Callable[[Exception], None]:
        """An ``IndexSource.on_error`` callback for CA ``ca``."""
        errors = self.index_reload_errors.labels(ca)

        def failed(exc: Exception) -> None:
            errors.inc()

        return failed

    def token_signed(self, seconds: float) -> None:
        """``Token.on_sign``: one PKCS#11 signature took ``seconds``."""
        self.sign_duration.observe(seconds)

    # Events (from the service)
    def signer_invalid(self, ca: str) -> None:
        self.signer_ok.labels(ca).set(0)

    def validity_capped(self, ca: str) -> None:
        self.capped.labels(ca).set(1)

    def served_unrefreshed(self) -> None:
        self.unrefreshed.inc()

    def cache_lookup(self, result: str) -> None:
        self._lookups.append(result)
        self._flush_soon()

    def sign_failed(self) -> None:
        self.sign_errors.inc()

    # --- HTTP -------------------------------------------------------------

    def request_done(self, method: str, reply: Reply | None, seconds: float) -> None:
        """Count one OCSP HTTP request; ``reply`` is None when none was sent."""
        self._done.append((method, reply, seconds))
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Write the counts at the end of this loop turn, with the turn's other requests.

        Each write to a metric takes a lock and, with several workers, writes the
        shared file: per request that was most of the metrics' cost. A loop turn
        under load answers many requests and a metric is written once for all of
        them, a few microseconds after the answers; this process's /metrics flushes
        first, so it always counts every request it answered.
        """
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a direct call): count now
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the requests and cache look-ups counted since the last flush."""
        self._flush_scheduled = False
        done, self._done = self._done, []
        lookups, self._lookups = self._lookups, []
        # A cached reply answers many requests: count by reply, then by label.
        by_reply: dict[tuple[str, int], tuple[Reply | None, int]] = {}
        for method, reply, _ in done:
            key = (method, id(reply))
            by_reply[key] = (reply, by_reply.get(key, (reply, 0))[1] + 1)
        requests: dict[tuple[str, str], int] = {}
        certs: dict[CertStatus, int] = {}
        for (method, _), (reply, count) in by_reply.items():
            if method not in METHODS:
                method = OTHER_METHOD
            status = HTTP_ERROR if reply is None else OCSP_STATUS_NAMES[reply.status]
            requests[method, status] = requests.get((method, status), 0) + count
            for cert_status in reply.cert_statuses if reply is not None else ():
                certs[cert_status] = certs.get(cert_status, 0) + count
        for (method, status), count in requests.items():
            child = self._request_children.get((method, status))
            if child is None:
                child = self.requests.labels(method, status)
                self._request_children[method, status] = child
            child.inc(count)
        for cert_status, count in certs.items():
            self._cert_children[cert_status].inc(count)
        for result, count in collections.Counter(lookups).items():
            self._cache_children[result].inc(count)
        if done:
            _observe_all(self.request_duration, [seconds for _, _, seconds in done])

    def observe(
        self, handler: Handler, skip_paths: Iterable[str] = ()
    ) -> Callable[[web.Request], Awaitable[StreamResponse]]:
        """``handler``, timed and counted, except for requests to ``skip_paths``.

        A wrapper on the OCSP routes rather than a middleware: with no
        middleware, aiohttp calls the handler without building a chain for each
        request.
        """
        skip = frozenset(skip_paths)
        done = self.request_done

        async def observed(request: web.Request) -> StreamResponse:
            if skip and request.path in skip:
                return await handler(request)
            started = request[STARTED] = time.perf_counter()
            reply: Reply | None = None
            try:
                response = await handler(request)
                reply = request.get(REPLY)
                return response
            finally:
                done(request.method, reply, time.perf_counter() - started)

        return observed

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or of all workers in multiprocess mode."""
        self.flush()
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def handle(self, request: web.Request) -> web.Response:
        body = self.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _observe_all(histogram: Histogram, values: list[float]) -> None:
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


def create_metrics_app(metrics: Metrics) -> web.Application:
    """An application that serves only /metrics (for ``metrics_listen``)."""
    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics.handle)
    return app


# --- several workers ----------------------------------------------------


def prepare_multiprocess() -> str:
    """Give the workers a fresh, empty metrics directory; call before forking.

    Sets PROMETHEUS_MULTIPROC_DIR and makes prometheus-client write values to
    files in it. prometheus-client chooses its value store when it is first
    imported, which in this process has already happened, so it chooses again
    here; metric objects are only created later, in the workers.
    """
    directory = tempfile.mkdtemp(prefix="hsm-ocsp-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def process_dead(pid: int) -> None:
    """A worker ended: forget its live gauges, keep its counters."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def remove_multiprocess_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == directory:
        del os.environ[MULTIPROC_ENV]


# --- access log ---------------------------------------------------------


_ACCESS_FORMAT = "%s ca=%s path_length=%d http=%d ocsp=%s certs=%s cached=%s %.3fms remote=%s"
# (ocsp_status, cert_statuses, certs as text, cached) of a request that got no OCSP answer
_NO_REPLY: tuple[str | None, tuple[str, ...], str, bool] = (None, (), "-", False)


def _reply_fields(reply: Reply) -> tuple[str | None, tuple[str, ...], str, bool]:
    certs = tuple(s.value for s in reply.cert_statuses)
    return OCSP_STATUS_NAMES[reply.status], certs, ",".join(certs) or "-", reply.cached


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

    _MEMO_SIZE = 1024

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # id(reply) -> (reply, fields); holding the reply keeps its id from being reused
        self._memo: dict[int, tuple[Reply, tuple[str | None, tuple[str, ...], str, bool]]] = {}

    def _fields(self, reply: Reply | None) -> tuple[str | None, tuple[str, ...], str, bool]:
        if reply is None:
            return _NO_REPLY
        if not reply.cached:  # signed for this request alone: nothing to remember
            return _reply_fields(reply)
        memo = self._memo.get(id(reply))
        if memo is not None and memo[0] is reply:
            return memo[1]
        fields = _reply_fields(reply)
        if len(self._memo) >= self._MEMO_SIZE:
            self._memo.clear()
        self._memo[id(reply)] = (reply, fields)
        return fields

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
