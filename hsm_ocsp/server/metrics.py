"""The metrics fed: by the service (answers, cache look-ups, signatures), the token
(up or down, C_Sign time), the indexes (entries, reloads) and the OCSP routes
(requests by method and status, durations), and served on /metrics.

Requests, cache look-ups and signatures are counted once a loop turn (see per_turn.py); in
multiprocess mode (metrics_files.py) /metrics sums every worker's files.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_response import StreamResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)

from ..config.model import CAConfig
from ..core.index import IndexSnapshot
from ..core.model import CertStatus
from ..core.reply import Events, Reply
from .app_keys import REPLY, STARTED
from .metric_families import CACHE_RESULTS, MetricFamilies
from .metrics_files import MULTIPROC_ENV
from .per_turn import OncePerTurn, observe_all

__all__ = ["METRICS_PATH", "Metrics", "create_metrics_app"]

METRICS_PATH = "/metrics"


HTTP_ERROR = "http_error"  # no OCSP response sent: 404, 405, 413, 500
METHODS = ("GET", "POST", "HEAD")
OTHER_METHOD = "other"
INDEX_STATUSES = ("V", "R", "E")


class Metrics(MetricFamilies, Events):
    """Every hsm_ocsp_ metric of one process, fed by the service, token and indexes.

    Each instance has its own registry, so tests may build many applications
    in one process. In multiprocess mode the values also go to the shared
    files and :meth:`exposition` reads those instead.
    """

    def __init__(self) -> None:
        super().__init__()
        # Children looked up once: labels() costs more than inc() on the hot path.
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._cert_children = {s: self.cert_statuses.labels(s.value) for s in CertStatus}
        self._cache_children = {r: self.cache_lookups.labels(r) for r in CACHE_RESULTS}
        # Counted, not yet written (see _flush_soon).
        self._done: list[tuple[str, Reply | None, float]] = []
        self._lookups: list[str] = []
        # and the producer's signatures: C_Sign seconds, answers signed, their reasons
        self._sign_seconds: list[float] = []
        self._signed = 0
        self._reasons: list[str] = []
        # Written at the end of the loop turn, with the turn's other requests (per_turn.py):
        # this process's /metrics flushes first, so it counts every request it answered.
        self._flush_soon = OncePerTurn(self.flush)

    # --- sources of values ----------------------------------------------

    def add_ca(self, ca: CAConfig, *, token: bool = True) -> None:
        """A CA served by this process, with the notAfter of the last of its signing
        certificates to expire (the alert is on when the CA runs out of them);
        ``token``: this process holds the token and the index (else the producer does,
        and says their state)."""
        name = ca.name
        last = max(cert.not_valid_after_utc for _, cert in ca.signing_certificates)
        self.responder_expiry.labels(name).set(last.timestamp())
        if not token:
            return
        self.token_up.labels(name).set(0)
        self.index_stale.labels(name).set(0)
        self.index_reload_errors.labels(name)

    def token_state(self, ca_names: Iterable[str]) -> Callable[[bool], None]:
        """What the token's up or down sets: token_up of ``ca_names`` (host_events.py)."""
        gauges = [self.token_up.labels(name) for name in ca_names]

        def changed(up: bool) -> None:
            for gauge in gauges:
                gauge.set(1 if up else 0)

        return changed

    def index_reloaded(self, ca: str) -> Callable[[IndexSnapshot], None]:
        """What a version of CA ``ca``'s index or CRLs taken up sets (host_events.py)."""
        entries = {s: self.index_entries.labels(ca, s) for s in INDEX_STATUSES}
        last = self.index_last_reload.labels(ca)

        def reloaded(snapshot: IndexSnapshot) -> None:
            for status, gauge in entries.items():
                gauge.set(snapshot.counts.get(status, 0))
            last.set(time.time())

        return reloaded

    def index_failed(self, ca: str) -> Callable[[Exception], None]:
        """What a version of CA ``ca``'s index or CRLs not taken counts."""
        errors = self.index_reload_errors.labels(ca)

        def failed(exc: Exception) -> None:
            errors.inc()

        return failed

    def crl_refused(self, ca: str) -> Callable[[str], None]:
        """What a CRL of CA ``ca`` refused counts, by reason."""

        def refused(reason: str) -> None:
            self.crl_errors.labels(ca, reason).inc()

        return refused

    def crl_state(self, ca: str, number: int | None, until: dt.datetime | None) -> None:
        """The CRL in service of CA ``ca``: its number and nextUpdate."""
        if number is not None:
            self.crl_number.labels(ca).set(number)
        if until is not None:
            self.crl_next_update.labels(ca).set(until.timestamp())

    def token_recovered(self, sessions: int, retries: int) -> None:
        """A token ridden out (TokenEvents): sessions opened again, calls tried again."""
        self.token_recoveries.labels("session").inc(sessions)
        self.token_recoveries.labels("throttled").inc(retries)

    def token_signed(self, seconds: float) -> None:
        """One PKCS#11 signature took ``seconds`` (TokenEvents)."""
        self._sign_seconds.append(seconds)
        self._flush_soon()

    # Events (from the service)
    def signed(self, seconds: float) -> None:
        self._signed += 1
        self._flush_soon()

    def signed_for(self, reason: str) -> None:
        self._reasons.append(reason)
        self._flush_soon()

    def from_store(self) -> None:
        self.store_hits.inc()

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

    def flush(self) -> None:
        """Write the requests, cache look-ups and signatures counted since the last flush."""
        self._flush_signatures()
        done, self._done = self._done, []
        lookups, self._lookups = self._lookups, []
        # Counted by label: (method, status name, certificate statuses) first.
        by_label = collections.Counter(
            (method, HTTP_ERROR, ())
            if reply is None
            else (method, reply.status_name, reply.cert_statuses)
            for method, reply, _ in done
        )
        requests: dict[tuple[str, str], int] = {}
        certs: dict[CertStatus, int] = {}
        for (method, status, cert_statuses), count in by_label.items():
            if method not in METHODS:
                method = OTHER_METHOD
            requests[method, status] = requests.get((method, status), 0) + count
            for cert_status in cert_statuses:
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
            observe_all(self.request_duration, [seconds for _, _, seconds in done])

    def _flush_signatures(self) -> None:
        seconds, self._sign_seconds = self._sign_seconds, []
        if seconds:
            observe_all(self.sign_duration, seconds)
        if self._signed:
            self.answers_signed.inc(self._signed)
            self._signed = 0
        reasons, self._reasons = self._reasons, []
        for reason, count in collections.Counter(reasons).items():
            self.signatures.labels(reason).inc(count)

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
        server_errors = self.http_server_errors

        async def observed(request: web.Request) -> StreamResponse:
            if skip and request.path in skip:
                return await handler(request)
            started = request[STARTED] = time.perf_counter()
            reply: Reply | None = None
            try:
                response = await handler(request)
                reply = request.get(REPLY)
                if response.status >= 500:
                    server_errors.inc()
                return response
            except web.HTTPException as exc:
                if exc.status >= 500:
                    server_errors.inc()
                raise
            except Exception:
                server_errors.inc()
                raise
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


def create_metrics_app(metrics: Metrics) -> web.Application:
    """An application that serves only /metrics (for ``metrics_listen``)."""
    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics.handle)
    return app


# --- several workers ----------------------------------------------------


# --- access log ---------------------------------------------------------


# (ocsp_status, cert_statuses, certs as text, cached) of a request that got no OCSP answer
