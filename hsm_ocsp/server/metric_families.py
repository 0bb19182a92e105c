"""The hsm_ocsp_ metric families: names, help, labels and how several workers add up.

Metric names are part of the interface (docs/operators-guide.md lists them; the alerts use them).
Labels take only bounded values: CA names from the config, the HTTP method folded
to GET/POST/HEAD/other, the OCSP response status by its RFC 6960 name, certificate
and cache-lookup results from fixed sets. ``metrics.Metrics`` feeds them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import __version__
from ..core.model import CertStatus

__all__ = ["BUCKETS", "CACHE_RESULTS", "PREFIX", "MetricFamilies"]

PREFIX = "hsm_ocsp_"
CACHE_RESULTS = ("hit", "miss", "stale")
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


class MetricFamilies:
    """Every hsm_ocsp_ metric family, in a registry of its own (so tests may build
    many applications in one process)."""

    def __init__(self) -> None:
        # The families below look alike on purpose: each is one metric of the interface.
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
        self.http_server_errors = Counter(
            PREFIX + "http_server_errors_total",
            "OCSP requests answered with an HTTP 5xx (a fault of the responder, never "
            "expected: clients get malformedRequest, tryLater or a 4xx for their faults).",
            registry=r,
        )
        self.store_soonest_next_update = Gauge(
            PREFIX + "store_soonest_next_update_timestamp_seconds",
            "The soonest nextUpdate among the answers the producer keeps current, per CA "
            "(Unix time): nearing now means refreshes are not being made.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.token_recoveries = Counter(
            PREFIX + "token_recoveries_total",
            "Token calls ridden out without declaring the token lost: kind session (a "
            "session the token dropped, opened again) or throttled (a call tried again).",
            ["kind"],
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
        self.answers_signed = Counter(
            PREFIX + "answers_signed_total",
            "Answers signed on the token (not key probes).",
            registry=r,
        )
        self.signatures = Counter(
            PREFIX + "signatures_total",
            "Answers signed on the token, by why: change (the index changed a status), "
            "refresh, fill (none stored yet), live (a client waited), nonce, unknown.",
            ["reason"],
            registry=r,
        )
        self.production_backlog = Gauge(
            PREFIX + "production_backlog",
            "Answers of changed certificates the producer has still to sign, per CA.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.production_lag = Gauge(
            PREFIX + "production_lag_seconds",
            "Seconds from the last index change taken up to the last of its new "
            "answers in the store, per CA.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.withdrawals_pending = Gauge(
            PREFIX + "withdrawals_pending",
            "Serials whose stored answers the index changed but whose withdrawal has not "
            "committed yet (a full disk, say); tried again every second, and the CA's "
            "stored answers are not served meanwhile.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.revocations_kept = Gauge(
            PREFIX + "index_revocations_dropped",
            "Revocations the CA's index in service no longer shows (a restored backup, "
            "a rewrite caught half-way): still answered revoked, as first seen.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_records = Gauge(
            PREFIX + "store_records",
            "Records in the host's answer store.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.replication_refused = Gauge(
            PREFIX + "replication_refused",
            "Entries of the fleet's Redis this edge did not copy since it started: not an "
            "answer signed for its CA that says what it claims, older than what it held "
            "or saw withdrawn, not revoked for a certificate seen revoked, or junk.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.replication_connected = Gauge(
            PREFIX + "replication_connected",
            "1 while an edge reaches the fleet's Redis (it serves its local copy either way).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.replication_lag = Gauge(
            PREFIX + "replication_lag_seconds",
            "How old the last change an edge copied from Redis was when it was copied "
            "(0 when nothing is waiting).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_hits = Counter(
            PREFIX + "store_answers_total",
            "Answers taken from the host's store, signed by another worker or before a "
            "restart, instead of signed again.",
            registry=r,
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
        self.crl_number = Gauge(
            PREFIX + "crl_number",
            "The CRL number of the CA's full CRL in service (a CA served from CRLs).",
            ["ca"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.crl_next_update = Gauge(
            PREFIX + "crl_next_update_timestamp_seconds",
            "Unix time the CA's CRLs in service reach their nextUpdate: from then its answers "
            "that need a signature are tryLater.",
            ["ca"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.crl_errors = Counter(
            PREFIX + "crl_errors_total",
            "CRLs not taken up, by reason (fetch, signature, issuer, order, expired, time, "
            "scope, format, issued): the last good CRL stays in service.",
            ["ca", "reason"],
            registry=r,
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
