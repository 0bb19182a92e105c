"""The token goes away or hangs; the responder survives and comes back.

The token is remote: ``p11-kit server`` in front of the session's SoftHSM token,
and the responder loads ``p11-kit-client.so`` (a remote module, as a network HSM
is). Killing the server's process group is a real token loss; SIGSTOP is a real
hang.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .support.ca import CASetup, build_ca, write_config
from .support.fleet import metric
from .support.p11kit import CLIENT_MODULE, P11KitServer
from .support.server import RunningServer, free_port
from .support.softhsm import MODULE, SoftHSM
from .support.waiting import within

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CLIENT_MODULE) or not os.path.exists("/usr/bin/p11-kit"),
        reason="p11-kit server and client module (Debian p11-kit) are not installed",
    ),
]


@pytest.fixture
def p11kit(tmp_path: Path, softhsm: SoftHSM) -> Iterator[P11KitServer]:
    server = P11KitServer(tmp_path / "p11kit.sock", MODULE, softhsm.label)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _config(tmp_path: Path, setup: CASetup, port: int, sign_timeout: str, **ca_extra: str) -> Path:
    path = write_config(tmp_path / "config.toml", {"root": setup}, port=port, **ca_extra)  # type: ignore[arg-type]
    text = path.read_text().replace(
        f'module = "{MODULE}"', f'module = "{CLIENT_MODULE}"\nsign_timeout = "{sign_timeout}"'
    )
    path.write_text(text)
    return path


def _post(url: str, body: bytes, timeout: float = 10) -> tuple[int, bytes, float]:
    started = time.monotonic()
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/ocsp-request"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - started


def _signs(url: str, setup: CASetup) -> bool:
    """A fresh nonce request (never cached) was signed."""
    http, body, _ = _post(url, setup.request("good", nonce=os.urandom(16)))
    return http == 200 and (
        ocsp.load_der_ocsp_response(body).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    )


def _token_up(url: str) -> float:
    """``hsm_ocsp_token_up{ca="root"}`` from /metrics."""
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        text = response.read().decode()
    line = next(x for x in text.splitlines() if x.startswith('hsm_ocsp_token_up{ca="root"}'))
    return float(line.rsplit(" ", 1)[1])


def _filled(server: RunningServer, setup: CASetup) -> None:
    """Until the producer has signed every serial ahead, and a moment for its pass to end."""
    entries = len(setup.ca.index.read_text().splitlines())
    deadline = time.monotonic() + 20
    while metric(server, 'hsm_ocsp_signatures_total{reason="fill"}') < 2 * entries:
        assert time.monotonic() < deadline, "the fill did not end"
        time.sleep(0.1)
    time.sleep(0.5)


def _text(url: str, path: str) -> str:
    with urllib.request.urlopen(url + path, timeout=5) as response:
        return str(response.read().decode())


def _status(url: str, path: str) -> int:
    try:
        with urllib.request.urlopen(url + path, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class Outcome:
    at: float
    kind: str
    http: int
    ocsp_status: ocsp.OCSPResponseStatus | None
    cert_status: ocsp.OCSPCertStatus | None
    seconds: float


@dataclass
class Load:
    """A few clients in threads, each sending one kind of request in a loop."""

    url: str
    bodies: dict[str, bytes]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, kind: str) -> None:
        while not self.stop.is_set():
            http, body, seconds = _post(self.url, self.bodies[kind])
            ocsp_status = cert_status = None
            if http == 200:
                response = ocsp.load_der_ocsp_response(body)
                ocsp_status = response.response_status
                if ocsp_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                    cert_status = response.certificate_status
            self.outcomes.append(
                Outcome(time.monotonic(), kind, http, ocsp_status, cert_status, seconds)
            )
            time.sleep(0.01)  # light load: two shared cores

    def start(self) -> None:
        for kind in self.bodies:
            thread = threading.Thread(target=self._run, args=(kind,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def between(self, start: float, end: float, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.at <= end and o.kind == kind]


def test_token_loss_serves_cached_answers_and_recovers_without_restart(
    tmp_path: Path,
    softhsm: SoftHSM,
    p11kit: P11KitServer,
    serve: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = _config(tmp_path, setup, port, sign_timeout="2s")
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", p11kit.address)
    server = serve(config, port, tmp_path / "server.log")  # type: ignore[operator]
    url = server.url

    bodies = {
        "cached-good": setup.request("good"),
        "cached-revoked": setup.request("revoked"),
        "nonce": setup.request("good", nonce=os.urandom(16)),
    }
    for kind in ("cached-good", "cached-revoked"):  # fill the pre-signed cache
        http, body, _ = _post(url, bodies[kind])
        assert http == 200
        assert ocsp.load_der_ocsp_response(body).response_status.value == 0

    _filled(server, setup)
    load = Load(url, bodies)
    load.start()
    try:
        time.sleep(1.0)
        lost_at = time.monotonic()
        p11kit.kill()
        down = within(lambda: _token_up(url) == 0, 5)
        assert down is not None, "hsm_ocsp_token_up still 1 five seconds after the token died"
        # The store holds a current answer for every serial: still ready, and /healthz
        # says what is degraded (a token outage must not empty the load balancer).
        assert _status(url, "readyz") == 200
        assert "degraded: token" in _text(url, "healthz")
        time.sleep(2.0)
        down_until = time.monotonic()

        p11kit.start()
        restarted_at = time.monotonic()
        recovered = within(lambda: _signs(url, setup), 10)
        ready = within(lambda: "degraded" not in _text(url, "healthz"), 10)
        assert _token_up(url) == 1
        time.sleep(0.5)
    finally:
        load.finish()

    print(f"signing resumed {recovered} s after the token came back; /readyz after {ready} s")
    assert recovered is not None and recovered < 5.0, f"signing resumed after {recovered} s"
    assert ready is not None and ready < 5.0
    assert server.process.poll() is None, "the responder exited"

    # While the token was gone: every answer an HTTP 200 OCSP response, cached
    # answers kept flowing, signed-on-demand answers were tryLater, never good.
    assert all(o.http == 200 for o in load.outcomes), {o.http for o in load.outcomes}
    outage = (lost_at + 0.5, down_until)
    cached_good = load.between(*outage, "cached-good")
    cached_revoked = load.between(*outage, "cached-revoked")
    nonce = load.between(*outage, "nonce")
    assert len(cached_good) >= 10 and len(cached_revoked) >= 10 and nonce
    assert all(o.cert_status is ocsp.OCSPCertStatus.GOOD for o in cached_good)
    assert all(o.cert_status is ocsp.OCSPCertStatus.REVOKED for o in cached_revoked)
    assert all(o.ocsp_status is ocsp.OCSPResponseStatus.TRY_LATER for o in nonce)
    # The revoked certificate was never answered good, at any time.
    assert not [
        o
        for o in load.outcomes
        if o.kind == "cached-revoked" and o.cert_status is not ocsp.OCSPCertStatus.REVOKED
    ]
    # After recovery the nonce requests are signed again.
    after = load.between(restarted_at + recovered, time.monotonic(), "nonce")
    assert after and after[-1].ocsp_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    log = server.log.read_text()
    assert "token lost" in log and "Traceback" not in log


def test_hung_token_times_out_and_does_not_block_other_requests(
    tmp_path: Path,
    softhsm: SoftHSM,
    p11kit: P11KitServer,
    serve: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = _config(tmp_path, setup, port, sign_timeout="1s")
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", p11kit.address)
    server = serve(config, port, tmp_path / "server.log")  # type: ignore[operator]
    url = server.url
    cached = setup.request("revoked")
    assert _post(url, cached)[0] == 200
    _filled(server, setup)  # the store answers every serial: a token outage is no unreadiness

    p11kit.signal(signal.SIGSTOP)  # every PKCS#11 call now waits for an answer
    try:
        hung: list[tuple[int, bytes, float]] = []
        threads = [
            threading.Thread(
                target=lambda: hung.append(_post(url, setup.request("good", nonce=os.urandom(16))))
            )
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        # Meanwhile cached answers and health checks are immediate.
        for _ in range(20):
            http, body, seconds = _post(url, cached)
            assert http == 200 and seconds < 0.5, seconds
            assert ocsp.load_der_ocsp_response(body).certificate_status is (
                ocsp.OCSPCertStatus.REVOKED
            )
        for thread in threads:
            thread.join(10)
        assert len(hung) == 3
        for http, body, seconds in hung:
            assert http == 200
            assert ocsp.load_der_ocsp_response(body).response_status is (
                ocsp.OCSPResponseStatus.TRY_LATER
            )
            assert seconds < 1.0 + 1.5, f"a hung signature held a request {seconds:.1f} s"
        # Later requests fail fast while the call is still stuck.
        http, body, seconds = _post(url, setup.request("good", nonce=b"n" * 16))
        assert ocsp.load_der_ocsp_response(body).response_status is (
            ocsp.OCSPResponseStatus.TRY_LATER
        )
        assert seconds < 1.5
        assert _status(url, "readyz") == 200  # the store answers: ready, degraded
        assert "degraded: token" in _text(url, "healthz")
        assert _token_up(url) == 0
    finally:
        p11kit.signal(signal.SIGCONT)

    resumed = within(lambda: _signs(url, setup), 10)
    print(f"signing resumed {resumed} s after SIGCONT")
    assert resumed is not None and resumed < 5.0
    assert server.process.poll() is None


def test_cached_answer_served_past_its_refresh_until_next_update_without_token(
    tmp_path: Path,
    softhsm: SoftHSM,
    p11kit: P11KitServer,
    serve: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refresh that cannot be signed keeps the cached answer, up to its nextUpdate only."""
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = _config(tmp_path, setup, port, sign_timeout="2s", validity='"6s"')
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", p11kit.address)
    server = serve(config, port, tmp_path / "server.log")  # type: ignore[operator]
    body = setup.request("good")
    http, first, _ = _post(server.url, body)
    assert http == 200
    cached = ocsp.load_der_ocsp_response(first)
    assert cached.certificate_status is ocsp.OCSPCertStatus.GOOD
    produced = cached.produced_at_utc.timestamp()
    next_update = cached.next_update_utc
    assert next_update is not None and next_update.timestamp() - produced == 6
    p11kit.kill()

    # Past the refresh time (half the validity), before nextUpdate: the same answer.
    time.sleep(max(0.0, produced + 3.5 - time.time()))
    http, again, _ = _post(server.url, body)
    assert http == 200 and again == first, "a still-valid cached answer was dropped"
    with urllib.request.urlopen(server.url + "metrics", timeout=5) as response:
        metrics = response.read().decode()
    served = next(
        x for x in metrics.splitlines() if x.startswith("hsm_ocsp_cache_served_unrefreshed_total ")
    )
    assert float(served.rsplit(" ", 1)[1]) >= 1

    # Past its nextUpdate it is never served: tryLater.
    time.sleep(max(0.0, next_update.timestamp() + 0.5 - time.time()))
    http, late, _ = _post(server.url, body)
    assert http == 200
    assert ocsp.load_der_ocsp_response(late).response_status is ocsp.OCSPResponseStatus.TRY_LATER


def _filled_producer(
    tmp_path: Path, setup: CASetup, serve: object, more: str = "", **ca_extra: str
) -> Any:
    """A responder with 2 workers and a producer on the p11-kit token, once it has
    signed every serial ahead (``more``: TOML appended to its configuration)."""
    port = free_port()
    config = _config(tmp_path, setup, port, sign_timeout="2s", **ca_extra)
    state = f'workers = 2\nstate_dir = "{tmp_path / "state"}"\n'
    config.write_text(config.read_text().replace("[server]\n", "[server]\n" + state, 1) + more)
    server = serve(config, port, tmp_path / "server.log")  # type: ignore[operator]
    entries = len(setup.ca.index.read_text().splitlines())
    assert within(lambda: _fill_signatures(server.url) >= 2 * entries, 30) is not None
    return server


def _answer(url: str, setup: CASetup, name: str) -> ocsp.OCSPResponse:
    http, body, _ = _post(url, setup.request(name))
    assert http == 200
    return ocsp.load_der_ocsp_response(body)


def test_a_revocation_while_the_token_is_gone_is_try_later_never_the_stored_good(
    tmp_path: Path,
    softhsm: SoftHSM,
    p11kit: P11KitServer,
    serve: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored answers keep flowing without the token, but a serial
    the index changed is withdrawn at once: tryLater until it can be signed again."""
    setup = build_ca(tmp_path / "ca", softhsm)
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", p11kit.address)
    server = _filled_producer(tmp_path, setup, serve)
    assert _answer(server.url, setup, "good").certificate_status is ocsp.OCSPCertStatus.GOOD
    p11kit.kill()
    setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
    setup.certs["new"] = setup.ca.issue("new")
    time.sleep(3)  # the producer has taken the new index up (it looks once a second)
    for _ in range(10):  # a new connection each: both workers
        late = _answer(server.url, setup, "good")
        assert late.response_status is ocsp.OCSPResponseStatus.TRY_LATER
        new = _answer(server.url, setup, "new")
        assert new.response_status is ocsp.OCSPResponseStatus.TRY_LATER
        kept = _answer(server.url, setup, "keycompromise")  # unchanged: still from the store
        assert kept.certificate_status is ocsp.OCSPCertStatus.REVOKED
    # Issue 31, item 2: the changes stayed queued; once the token is back the producer
    # signs every hash form of each changed serial by itself, within seconds, before
    # any client asks again (the changes' signatures are counted as such).
    changes = _signatures(server.url, "change")
    p11kit.start()
    assert within(lambda: _signatures(server.url, "change") >= changes + 4, 20) is not None
    live = _signatures(server.url, "live")
    for name, status in (("good", ocsp.OCSPCertStatus.REVOKED), ("new", ocsp.OCSPCertStatus.GOOD)):
        for algorithm in ("sha1", "sha256"):
            answer = _answer_with(server.url, setup, name, algorithm)
            assert answer.certificate_status is status, (name, algorithm)
    assert _signatures(server.url, "live") == live  # every one from the store


def test_a_token_outage_past_half_the_validity_serves_pre_produced_answers_to_next_update(
    tmp_path: Path,
    softhsm: SoftHSM,
    p11kit: P11KitServer,
    serve: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the token gone for longer than half the validity,
    every worker serves the pre-produced answers (refresh due or not) up to their
    nextUpdate, never after; a serial new to the index gets tryLater."""
    setup = build_ca(tmp_path / "ca", softhsm)
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", p11kit.address)
    server = _filled_producer(tmp_path, setup, serve, validity='"8s"')
    p11kit.kill()  # from now on nothing is signed: what is served was stored before
    killed = time.time()
    stored = {name: _post(server.url, setup.request(name))[1] for name in ("good", "revoked")}
    answers = {name: ocsp.load_der_ocsp_response(body) for name, body in stored.items()}
    assert answers["good"].certificate_status is ocsp.OCSPCertStatus.GOOD
    assert answers["revoked"].certificate_status is ocsp.OCSPCertStatus.REVOKED
    setup.certs["new"] = setup.ca.issue("new")
    refresh = {n: a.produced_at_utc.timestamp() + 4 for n, a in answers.items()}  # half
    ends = {n: a.next_update_utc.timestamp() for n, a in answers.items()}  # type: ignore[union-attr]
    assert all(ends[n] - refresh[n] == 4 for n in answers)

    # Past its refresh time, the token still gone: the very same answer, on both workers.
    time.sleep(max(0.0, refresh["good"] + 0.3 - time.time()))
    checks = 0
    while time.time() < ends["good"] - 0.3:
        for name, body in stored.items():
            if time.time() < ends[name] - 0.3:
                assert _post(server.url, setup.request(name))[1] == body, f"{name} dropped"
        new = _answer(server.url, setup, "new")
        assert new.response_status is ocsp.OCSPResponseStatus.TRY_LATER
        checks += 1
        time.sleep(0.1)
    assert checks >= 5

    # After its nextUpdate an answer is never served.
    time.sleep(max(0.0, ends["good"] + 0.5 - time.time()))
    assert time.time() - killed > 4.0  # the outage outlasted half the validity
    for _ in range(4):
        late = _answer(server.url, setup, "good")
        assert late.response_status is ocsp.OCSPResponseStatus.TRY_LATER


def _signatures(url: str, reason: str) -> float:
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = f'hsm_ocsp_signatures_total{{reason="{reason}"}}'
    lines = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def _answer_with(url: str, setup: CASetup, name: str, algorithm: str) -> ocsp.OCSPResponse:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    chosen = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}[algorithm]
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, setup.ca.certificate, chosen)
    http, body, _ = _post(url, builder.build().public_bytes(Encoding.DER))
    assert http == 200
    return ocsp.load_der_ocsp_response(body)


def _fill_signatures(url: str) -> float:
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        text = response.read().decode()
    lines = [
        x for x in text.splitlines() if x.startswith('hsm_ocsp_signatures_total{reason="fill"}')
    ]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_a_revocation_while_the_token_is_gone_is_withdrawn_on_an_edge_too(
    tmp_path: Path,
    softhsm: SoftHSM,
    p11kit: P11KitServer,
    serve: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signing host's token is gone, a revocation is
    withdrawn on the signing host and, through Redis, on the keyless edge: tryLater
    there too, never the good it had copied."""
    from .support.redis import RedisServer

    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        setup = build_ca(tmp_path / "ca", softhsm)
        monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", p11kit.address)
        _filled_producer(tmp_path, setup, serve, f'\n[store]\nredis = "{redis.url}"\n')
        edge_port = free_port()
        edge_config = tmp_path / "edge.toml"
        edge_config.write_text(
            f'[server]\nlisten = "127.0.0.1:{edge_port}"\nworkers = 2\n'
            f'state_dir = "{tmp_path / "edge"}"\n\n[store]\nredis = "{redis.url}"\n\n'
            f'[[ca]]\nname = "root"\ncertificate = "{setup.ca.cert_path}"\n'
            f'responder_certificate = "{setup.responder_cert}"\n'
        )
        edge = serve(edge_config, edge_port, tmp_path / "edge.log")  # type: ignore[operator]
        assert _answer(edge.url, setup, "good").certificate_status is ocsp.OCSPCertStatus.GOOD
        p11kit.kill()
        setup.ca.revoke(setup.certs["good"], "-crl_reason", "keyCompromise")
        assert (
            within(
                lambda: (
                    _answer(edge.url, setup, "good").response_status
                    is ocsp.OCSPResponseStatus.TRY_LATER
                ),
                15,
            )
            is not None
        )
        for _ in range(10):  # both edge workers: withdrawn, never the copied good
            late = _answer(edge.url, setup, "good")
            assert late.response_status is ocsp.OCSPResponseStatus.TRY_LATER
            kept = _answer(edge.url, setup, "keycompromise")
            assert kept.certificate_status is ocsp.OCSPCertStatus.REVOKED
    finally:
        redis.stop()


def test_a_restart_while_the_token_is_away_serves_the_store(
    tmp_path: Path, softhsm: SoftHSM, p11kit: P11KitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 31, item 3: ``serve`` started again while the token is away (a host reboot
    during an HSM outage) serves its full store, stays ready, and signs again once the
    token is back; before, the producer gave up after five tries and serve stopped."""
    from .support.server import start_server

    setup = build_ca(tmp_path / "ca", softhsm)
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", p11kit.address)
    first = _filled_producer(tmp_path, setup, lambda c, p, lg: start_server(c, p, lg))
    config, port = tmp_path / "config.toml", first.port
    first.stop()
    p11kit.kill()
    second = start_server(config, port, tmp_path / "second.log")  # waits for /readyz 200
    try:
        for name, status in (
            ("good", ocsp.OCSPCertStatus.GOOD),
            ("keycompromise", ocsp.OCSPCertStatus.REVOKED),
        ):
            for _ in range(6):  # both workers
                assert _answer(second.url, setup, name).certificate_status is status
        nonce = _post(second.url, setup.request("good", nonce=os.urandom(16)))[1]
        assert ocsp.load_der_ocsp_response(nonce).response_status is (
            ocsp.OCSPResponseStatus.TRY_LATER
        )
        assert "token not usable at start" in (tmp_path / "second.log").read_text()
        p11kit.start()
        assert (
            within(
                lambda: (
                    ocsp.load_der_ocsp_response(
                        _post(second.url, setup.request("good", nonce=os.urandom(16)))[1]
                    ).response_status
                    is ocsp.OCSPResponseStatus.SUCCESSFUL
                ),
                20,
            )
            is not None
        )
    finally:
        second.stop()
