"""During a cold fill on a slow token, a client waits a bounded time: its
signature takes its turn beside the producer's (which wait in a line of their own) and,
if the token has not reached it within 2 s, the answer is tryLater, never a wait of many
seconds behind the fill."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from hsm_ocsp.core.sign_queue import MAX_WAIT

from .support import behaving_token
from .support.ca import build_ca, write_config
from .support.fleet import metric
from .support.server import free_port, start_server
from .support.softhsm import MODULE, SoftHSM
from .support.watch import request_for

pytestmark = pytest.mark.slow
CLIENTS = 30


def test_clients_wait_a_bounded_time_during_a_cold_fill_on_a_slow_token(
    tmp_path: Path, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in behaving_token.environment(latency_ms=100).items():  # 10 a second
        monkeypatch.setenv(name, value)
    module = behaving_token.build(tmp_path)
    setup = build_ca(tmp_path / "ca", softhsm)
    late = [f"late{i}" for i in range(CLIENTS)]
    for name in late:
        setup.certs[name] = setup.ca.issue(name)
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        {"root": setup},
        port=port,
        server=f'workers = 2\nstate_dir = "{tmp_path / "state"}"',
    )
    config.write_text(config.read_text().replace(f'module = "{MODULE}"', f'module = "{module}"'))
    server = start_server(config, port, tmp_path / "server.log")
    seen: list[tuple[float, object]] = []

    def ask(name: str) -> None:  # a serial near the index's end: not produced yet
        cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
        body = request_for(cert, setup.ca.certificate, "sha256")
        started = time.monotonic()
        request = urllib.request.Request(
            server.url, data=body, headers={"Content-Type": "application/ocsp-request"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = ocsp.load_der_ocsp_response(response.read())
        seen.append((time.monotonic() - started, answer.response_status))

    try:
        threads = [threading.Thread(target=ask, args=(name,)) for name in late]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # The store's metric is current while the fill runs (it read 0 through a fill).
        entries = len(setup.ca.index.read_text().splitlines())
        time.sleep(2.5)
        records = metric(server, "hsm_ocsp_store_records")
        assert 0 < records < 2 * entries, (records, entries)
    finally:
        server.stop()
    assert len(seen) == CLIENTS
    waits = sorted(wait for wait, _ in seen)
    later = sum(status is ocsp.OCSPResponseStatus.TRY_LATER for _, status in seen)
    print(
        f"waits: median {waits[len(waits) // 2]:.2f} s, longest {waits[-1]:.2f} s; {later} tryLater"
    )
    assert waits[-1] < MAX_WAIT + 1.5, waits
    assert {status for _, status in seen} <= {
        ocsp.OCSPResponseStatus.SUCCESSFUL,
        ocsp.OCSPResponseStatus.TRY_LATER,
    }
    assert ocsp.OCSPResponseStatus.SUCCESSFUL in {status for _, status in seen}
