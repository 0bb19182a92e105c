"""Fixtures with real parts: a SoftHSM token, CAs made by ``openssl ca``, servers
as processes. The helpers themselves are in ``tests/support``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.ca import CASetup, build_ca
from .support.redis import RedisServer
from .support.server import RunningServer, start_server
from .support.softhsm import PIN, SO_PIN, TOKEN_LABEL, SoftHSM, use_softhsm_token


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    """One SoftHSM token for the test session, made by softhsm/init-token.sh."""
    directory = tmp_path_factory.mktemp("softhsm")
    conf = directory / "softhsm2.conf"
    use_softhsm_token(conf, label=TOKEN_LABEL, pin=PIN, so_pin=SO_PIN)
    return SoftHSM(conf=conf, label=TOKEN_LABEL)


@pytest.fixture
def ca_setup(tmp_path: Path, softhsm: SoftHSM) -> CASetup:
    return build_ca(tmp_path / "ca", softhsm)


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start real servers; each is stopped (by PID) at the end of the test."""
    started: list[RunningServer] = []

    def _serve(config: Path, port: int, log: Path) -> RunningServer:
        server = start_server(config, port, log)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server (Debian's) on a Unix socket, stopped at the end of the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
