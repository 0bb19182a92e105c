"""Prometheus metrics of a real server, with one and with two worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509

from hsm_ocsp import __version__
from hsm_ocsp.core.model import CertStatus, OCSPResponseStatus
from hsm_ocsp.core.reply import Reply
from hsm_ocsp.server.metrics import Metrics

from .support.ca import CASetup, build_ca, write_config
from .support.http_client import UNKNOWN_SERIAL, get_path, http
from .support.requests import build_request
from .support.scrape import Samples, sample, scrape, value
from .support.server import RunningServer, free_port
from .support.softhsm import SoftHSM
from .support.waiting import until


def ocsp_status(body: bytes) -> str:
    return str(asn1_ocsp.OCSPResponse.load(body)["response_status"].native)


def send_mix(base: str, setup: CASetup) -> None:
    """The known mix: every request's OCSP outcome is checked as it is sent."""
    issuer = setup.ca.certificate
    good = build_request([(issuer, setup.serial("good"))])
    revoked = build_request([(issuer, setup.serial("revoked"))])
    unknown = build_request([(issuer, UNKNOWN_SERIAL)])
    foreign = asn1_ocsp.CertId(
        {
            "hash_algorithm": {"algorithm": "sha1"},
            "issuer_name_hash": b"\x01" * 20,
            "issuer_key_hash": b"\x02" * 20,
            "serial_number": 1,
        }
    )
    unauthorized = build_request([foreign])
    sent = [
        (http(base, good), "successful"),  # POST good: miss
        (http(base, revoked), "successful"),  # POST revoked: miss
        (http(base + get_path(unknown)), "successful"),  # GET unknown: miss
        (http(base + get_path(good)), "successful"),  # GET good: hit (same CertID)
        (http(base + "root/" + get_path(good), method="HEAD"), None),  # HEAD good: hit
        (http(base, b"not DER"), "malformed_request"),  # POST malformed
        (http(base + "!!!not-base64!!!"), "malformed_request"),  # GET malformed
        (http(base, unauthorized), "unauthorized"),  # POST unauthorized
    ]
    for (status, body), expected in sent:
        assert status == 200
        if expected is not None:
            assert ocsp_status(body) == expected
    assert http(base + "root/extra", good)[0] == 404  # POST, no OCSP response
    assert http(base, good, method="PUT")[0] == 405  # other method


# (method, ocsp_status) -> count for the mix above
EXPECTED_REQUESTS = {
    ("POST", "successful"): 2,
    ("GET", "successful"): 2,
    ("HEAD", "successful"): 1,
    ("POST", "malformedRequest"): 1,
    ("GET", "malformedRequest"): 1,
    ("POST", "unauthorized"): 1,
    ("POST", "http_error"): 1,
    ("other", "http_error"): 1,
}
EXPECTED_CERT_STATUSES = {"good": 3, "revoked": 1, "unknown": 1}
CACHE_LOOKUPS = 5  # the five requests that reach a CA's index


def start(
    tmp_path: Path, softhsm: SoftHSM, serve: Callable[..., RunningServer], server: str
) -> tuple[RunningServer, CASetup]:
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(  # nothing signed ahead: the counts are the requests' own
        tmp_path / "hsm-ocsp.toml",
        {"root": setup},
        server=server,
        port=port,
        producer="pre_produce = false",
    )
    return serve(config, port, tmp_path / "server.log"), setup


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def promtool_check(text: str) -> None:
    assert shutil.which("promtool"), "promtool (Debian package prometheus) is needed"
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_counters_move_by_exactly_the_requests_sent(
    tmp_path: Path, softhsm: SoftHSM, serve: Callable[..., RunningServer], workers: int
) -> None:
    started = time.time()
    server, setup = start(tmp_path, softhsm, serve, f"workers = {workers}")
    metrics_url = server.url + "metrics"
    # /readyz answered from one worker; wait until every worker has its key.
    deadline = time.monotonic() + 20
    # ("token not ready" also says " ready": count the workers' own lines.)
    while len(re.findall(r"worker \d+ ready", server.log.read_text())) < workers:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    _, before = scrape(metrics_url)
    assert value(before, "hsm_ocsp_token_up", ca="root") == 1

    send_mix(server.url, setup)
    # A worker counts a loop turn's requests at the end of the turn, just after the
    # answers went out: with two workers the other one may be a moment behind, and a
    # scrape may fall between two families of one flush (the requests counted, their
    # durations not yet). Wait for every family the assertions read.
    deadline = time.monotonic() + 5
    while True:
        text, after = scrape(metrics_url)
        counted = sum(v for (name, _), v in after.items() if name == "hsm_ocsp_requests_total")
        timed = delta(before, after, "hsm_ocsp_request_duration_seconds_count")
        looked = sum(
            delta(before, after, "hsm_ocsp_cache_lookups_total", result=r)
            for r in ("hit", "miss", "stale")
        )
        total = sum(EXPECTED_REQUESTS.values())
        if (counted >= total and timed >= total and looked >= CACHE_LOOKUPS) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.05)

    for (method, status), count in EXPECTED_REQUESTS.items():
        got = delta(before, after, "hsm_ocsp_requests_total", method=method, ocsp_status=status)
        assert got == count, (method, status)
    assert sum(v for (name, _), v in after.items() if name == "hsm_ocsp_requests_total") == sum(
        EXPECTED_REQUESTS.values()
    )
    for status, count in EXPECTED_CERT_STATUSES.items():
        assert delta(before, after, "hsm_ocsp_cert_status_total", status=status) == count
    assert delta(before, after, "hsm_ocsp_request_duration_seconds_count") == sum(
        EXPECTED_REQUESTS.values()
    )
    lookups = {
        r: delta(before, after, "hsm_ocsp_cache_lookups_total", result=r)
        for r in ("hit", "miss", "stale")
    }
    assert sum(lookups.values()) == CACHE_LOOKUPS
    assert lookups["stale"] == 0
    if workers == 1:  # one cache: the repeated CertID is a hit; with two it depends
        assert lookups == {"hit": 2, "miss": 3, "stale": 0}
    # A signature for each miss the host's store did not answer (another worker signed
    # it), plus any key probe the token watcher made.
    signed = delta(before, after, "hsm_ocsp_sign_duration_seconds_count")
    from_store = delta(before, after, "hsm_ocsp_store_answers_total")
    assert from_store <= workers - 1
    assert lookups["miss"] - from_store <= signed <= lookups["miss"] + workers
    assert value(after, "hsm_ocsp_sign_errors_total") == 0

    # Gauges: the same whatever the number of workers.
    assert value(after, "hsm_ocsp_token_up", ca="root") == 1
    assert setup.responder_cert is not None
    signer = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())
    assert (
        value(after, "hsm_ocsp_responder_certificate_expiry_timestamp_seconds", ca="root")
        == signer.not_valid_after_utc.timestamp()
    )
    index = setup.ca.index.read_text().splitlines()
    for letter in "VRE":
        assert value(after, "hsm_ocsp_index_entries", ca="root", status=letter) == sum(
            1 for line in index if line.startswith(letter + "\t")
        )
    reloaded = value(after, "hsm_ocsp_index_last_reload_timestamp_seconds", ca="root")
    assert started <= reloaded <= time.time()
    assert value(after, "hsm_ocsp_index_reload_errors_total", ca="root") == 0
    assert value(after, "hsm_ocsp_build_info", version=__version__) == 1
    assert "serial" not in text and str(UNKNOWN_SERIAL) not in text
    promtool_check(text)


def test_a_dead_worker_does_not_reset_the_counters(
    tmp_path: Path,
    softhsm: SoftHSM,
    serve: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server makes its metrics directory under TMPDIR: put it where we can look.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    metrics_port = free_port()
    server, setup = start(
        tmp_path,
        softhsm,
        serve,
        f'workers = 2\nmetrics_listen = "127.0.0.1:{metrics_port}"',
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    send_mix(server.url, setup)
    # A worker records a request after its answer is on the way (and a loop turn's
    # requests at once): wait until every count is in, then kill.
    deadline = time.monotonic() + 10
    while any(
        value(scrape(metrics_url)[1], "hsm_ocsp_requests_total", method=m, ocsp_status=s) != n
        for (m, s), n in EXPECTED_REQUESTS.items()
    ):
        assert time.monotonic() < deadline, "the requests were never all counted"
        time.sleep(0.05)
    (metrics_dir,) = (tmp_path / "tmp").glob("hsm-ocsp-metrics-*")
    workers = server.worker_pids()
    assert len(workers) == 2
    served = [pid for pid in workers if (metrics_dir / f"counter_{pid}.db").exists()]
    assert served, "no worker wrote a counter"
    victim = served[0]

    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = server.worker_pids()
        if victim not in now and len(now) == 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the dead worker was not replaced")
    assert not (metrics_dir / f"gauge_livemin_{victim}.db").exists()  # its gauges go
    assert (metrics_dir / f"counter_{victim}.db").exists()  # its counts stay
    _, after = scrape(metrics_url)
    for (method, status), count in EXPECTED_REQUESTS.items():
        assert value(after, "hsm_ocsp_requests_total", method=method, ocsp_status=status) == count
    assert value(after, "hsm_ocsp_cert_status_total", status="good") == 3

    # /metrics is on metrics_listen only: on the main port it is an OCSP path.
    code, body = http(server.url + "metrics")
    assert code == 200 and ocsp_status(body) == "malformed_request"
    server.stop()
    assert not metrics_dir.exists()  # the parent cleans up after itself


P11_KIT_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"


class RemoteToken:
    """The test token behind ``p11-kit server``: killing the server unplugs it."""

    def __init__(self, softhsm: SoftHSM, socket: Path) -> None:
        self.softhsm = softhsm
        self.socket = socket
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        module, token = self.softhsm.module, f"pkcs11:token={self.softhsm.label}"
        self.process = subprocess.Popen(
            ["p11-kit", "server", "-f", "-n", str(self.socket), "--provider", module, token],
            start_new_session=True,  # its own process group, with its per-client children
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(self.socket.exists)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # the group, with its children
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@pytest.mark.skipif(
    not (shutil.which("p11-kit") and Path(P11_KIT_CLIENT).exists()), reason="needs p11-kit"
)
@pytest.mark.slow
@pytest.mark.parametrize("pre_produce", [True, False])
def test_a_token_outage_shows_in_token_up_and_healthz_not_in_readiness(
    tmp_path: Path,
    softhsm: SoftHSM,
    serve: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    pre_produce: bool,
) -> None:
    """With every serial's answer in the store the instance stays ready without the
    token; without pre-production (the store lacks answers) readiness needs the token."""
    remote = RemoteToken(softhsm, tmp_path / "p11-kit.sock")
    remote.start()
    try:
        monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", f"unix:path={remote.socket}")
        setup = build_ca(tmp_path / "ca", softhsm)
        port = free_port()
        producer = "" if pre_produce else "pre_produce = false"
        config = write_config(
            tmp_path / "hsm-ocsp.toml", {"root": setup}, port=port, producer=producer
        )
        config.write_text(config.read_text().replace(softhsm.module, P11_KIT_CLIENT))
        server = serve(config, port, tmp_path / "server.log")
        assert sample(server, "hsm_ocsp_token_up", ca="root") == 1
        fresh = build_request([(setup.ca.certificate, setup.serial("good"))], nonce=os.urandom(16))
        time.sleep(1)  # the fill pass ends

        remote.stop()
        status, body = http(server.url, fresh)
        assert status == 200 and ocsp_status(body) == "try_later"
        # Every serial has a current answer in the store: the instance answers correctly
        # without the token, so it stays ready; /healthz and the metric say the rest.
        status, text = http(server.url + "readyz")
        assert status == (200 if pre_produce else 503), text
        status, text = http(server.url + "healthz")
        assert status == 200 and b"token" in text
        assert (b"degraded: token" in text) is pre_produce
        assert sample(server, "hsm_ocsp_token_up", ca="root") == 0
        assert sample(server, "hsm_ocsp_sign_errors_total") == 1

        remote.start()
        until(lambda: b"token" not in http(server.url + "healthz")[1])
        assert sample(server, "hsm_ocsp_token_up", ca="root") == 1
        assert http(server.url + "readyz")[0] == 200
        status, body = http(server.url, fresh)
        assert ocsp_status(body) == "successful"
        server.stop()
    finally:
        remote.stop()


def test_index_reload_errors_are_counted(
    tmp_path: Path, softhsm: SoftHSM, serve: Callable[..., RunningServer]
) -> None:
    server, setup = start(tmp_path, softhsm, serve, "")
    good_index = setup.ca.index.read_bytes()
    setup.ca.index.write_bytes(good_index + b"V\tnot an index line\n")
    until(lambda: sample(server, "hsm_ocsp_index_reload_errors_total", ca="root") == 1)
    assert sample(server, "hsm_ocsp_index_entries", ca="root", status="V") == good_index.count(
        b"V\t"
    )
    extra = b"V\t301231235959Z\t\t7777\tunknown\t/CN=new\n"
    setup.ca.index.write_bytes(good_index + extra)
    until(
        lambda: (
            sample(server, "hsm_ocsp_index_entries", ca="root", status="V")
            == good_index.count(b"V\t") + 1
        )
    )
    assert sample(server, "hsm_ocsp_index_reload_errors_total", ca="root") == 1


def _registry_samples(metrics: Metrics) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
    }


async def test_requests_of_one_loop_turn_are_counted_when_the_turn_ends() -> None:
    metrics = Metrics()
    good = Reply(b"", OCSPResponseStatus.SUCCESSFUL, cert_statuses=(CertStatus.GOOD,))
    for _ in range(3):
        metrics.cache_lookup("hit")
        metrics.request_done("GET", good, 0.0002)
    metrics.request_done("PUT", None, 0.0001)
    assert value(_registry_samples(metrics), "hsm_ocsp_request_duration_seconds_count") == 0

    await asyncio.sleep(0)  # the loop turns once

    samples = _registry_samples(metrics)
    requests = "hsm_ocsp_requests_total"
    assert value(samples, requests, method="GET", ocsp_status="successful") == 3
    assert value(samples, requests, method="other", ocsp_status="http_error") == 1
    assert value(samples, "hsm_ocsp_cert_status_total", status="good") == 3
    assert value(samples, "hsm_ocsp_cache_lookups_total", result="hit") == 3
    assert value(samples, "hsm_ocsp_request_duration_seconds_count") == 4


async def test_metrics_page_counts_the_requests_of_the_current_turn() -> None:
    metrics = Metrics()
    metrics.request_done("POST", None, 0.0001)
    text = metrics.exposition().decode()
    assert 'hsm_ocsp_requests_total{method="POST",ocsp_status="http_error"} 1.0' in text


def test_observations_written_together_fill_the_same_buckets_as_one_by_one() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from hsm_ocsp.server.metric_families import BUCKETS
    from hsm_ocsp.server.per_turn import observe_all

    durations = [0.0, 0.0001, 0.00011, 0.001, 0.0099, 0.01, 9.9, 10.0, 11.0, 3600.0]
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("d", "d", buckets=BUCKETS, registry=one)
    for seconds in durations:
        single.observe(seconds)
    observe_all(Histogram("d", "d", buckets=BUCKETS, registry=many), durations)
    samples = [
        [
            (s.name, s.labels, s.value)
            for family in r.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        ]
        for r in (one, many)
    ]
    assert len(samples[0]) > len(BUCKETS) and samples[0] == samples[1]


def test_many_observations_at_once_equal_one_by_one() -> None:
    """The request histogram is filled once a loop turn through private fields."""
    import random

    from prometheus_client import CollectorRegistry, Histogram

    from hsm_ocsp.server.per_turn import observe_all

    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("d", "d", registry=one)
    at_once = Histogram("d", "d", registry=many)
    rng = random.Random(7)
    values = [rng.choice([0.005, 0.1, 10.0, 1e9]) * rng.random() for _ in range(1000)]
    values += [0.0, 0.005, 0.01, 0.025, 10.0]  # on the bounds: counted in that bucket
    for v in values:
        by_one.observe(v)
    observe_all(at_once, values)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for metric in registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    expected, got = samples(one), samples(many)
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        assert got[key] == pytest.approx(want), key
