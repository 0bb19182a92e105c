"""``workers = N``: processes share the port, and one that dies is replaced."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp as x509_ocsp

from .support.ca import CASetup, write_config
from .support.requests import build_request
from .support.server import free_port
from .support.waiting import until


def _ask(url: str, der: bytes) -> x509_ocsp.OCSPResponse:
    request = urllib.request.Request(
        url, data=der, headers={"Content-Type": "application/ocsp-request"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return x509_ocsp.load_der_ocsp_response(answer.read())


def test_killed_worker_is_replaced_and_requests_keep_succeeding(
    tmp_path: Path, ca_setup: CASetup, serve: Any
) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.toml", {"root": ca_setup}, server="workers = 2", port=port)
    server = serve(config, port, tmp_path / "server.log")
    der = build_request([(ca_setup.ca.certificate, ca_setup.serial("good"))])
    until(lambda: len(set(server.worker_pids())) == 2)
    before = set(server.worker_pids())
    # Both must listen before one is killed, or the kill may leave no listener.
    for pid in before:
        mark = b"(pid %d)" % pid
        until(lambda: mark in server.log.read_bytes())  # noqa: B023 (called at once)
    victim = min(before)

    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    answered = resets = 0
    deadline = killed + 20
    while time.monotonic() < deadline:  # the survivor answers while the parent replaces
        try:
            response = _ask(server.url, der)
        except ConnectionResetError:
            # A connection the kernel had queued on the dead worker's socket
            # (SO_REUSEPORT) is reset; that may happen only just after the kill.
            assert time.monotonic() - killed < 1.0, "connection reset long after the kill"
            resets += 1
            continue
        assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
        answered += 1
        now = set(server.worker_pids())
        if victim not in now and len(now) == 2:
            break
        time.sleep(0.05)
    after = set(server.worker_pids())
    assert victim not in after and len(after) == 2, server.log.read_text()
    replacement = (after - before).pop()

    # The new worker serves too: the kernel spreads new connections over both.
    until(lambda: b"worker %d ready" % replacement in server.log.read_bytes())
    for _ in range(20):
        assert _ask(server.url, der).certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert answered > 0 and resets <= 3
    assert server.process.poll() is None


def test_workers_run_uvloop_unless_asyncio_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import uvloop

    from hsm_ocsp.server.event_loop import EVENT_LOOP_ENV, new_event_loop

    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    loop = new_event_loop()
    assert isinstance(loop, uvloop.Loop)
    loop.close()
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    loop = new_event_loop()
    assert isinstance(loop, asyncio.BaseEventLoop) and not isinstance(loop, uvloop.Loop)
    loop.close()
