"""Revocations among random faults: a fleet of two signing hosts, an edge and Redis.

A seeded sequence of steps: a revocation, a producer killed, Redis killed (coming back
empty) or restarted from an older snapshot, a host's state volume filled then freed, the
second host's index copy lagging then catching up, the edge restarted. After every step
every revoked serial is asked of every host and the edge, and the rule holds:
- a signing host answers a revocation its index shows (from a few seconds after it was
  written there) as revoked or tryLater, never good;
- the edge never answers good a serial it has answered revoked;
- nothing answers with an HTTP 5xx.
``HSM_OCSP_FAULT_SEEDS=1,2,3`` runs other seeds; a failure names its seed and step.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.x509 import ocsp

from hsm_ocsp.store.vouch import VOUCH_FOR

from .support import disk
from .support.ca import CASetup, build_ca
from .support.fleet import edge_host, filled, ready, signing_host
from .support.redis import RedisServer
from .support.server import RunningServer
from .support.softhsm import SoftHSM
from .support.watch import request_for, status_of, until

pytestmark = pytest.mark.slow
SEEDS = [int(s) for s in os.environ.get("HSM_OCSP_FAULT_SEEDS", "6960").split(",")]
STEPS = 14
GRACE = VOUCH_FOR + 3.0
REVOKED, GOOD = ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.GOOD


@dataclasses.dataclass
class Fleet:
    tmp: Path
    setup: CASetup
    redis: RedisServer
    a: RunningServer
    b: RunningServer
    edge: RunningServer
    copy: Path  # host b's index
    mounted: bool  # host a's state_dir is a small tmpfs (else no disk fault is made)
    lagging: bool = False
    full: Path | None = None  # the ballast filling host a's state volume
    shown: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    edge_revoked: set[str] = dataclasses.field(default_factory=set)

    def sync_copy(self) -> None:
        fresh = self.copy.with_suffix(".new")
        shutil.copy(self.setup.ca.index, fresh)
        fresh.rename(self.copy)
        now = time.monotonic()
        for serial in self.shown:  # what b's index shows from now on
            self.shown[serial].setdefault("b", now)

    def stop(self) -> None:
        for server in (self.edge, self.b, self.a):
            server.stop()
        if self.full is not None:
            self.full.unlink(missing_ok=True)


@pytest.fixture
def fleet(tmp_path: Path, softhsm: SoftHSM) -> Iterator[Fleet]:
    setup = build_ca(tmp_path / "ca", softhsm)
    for i in range(STEPS):
        setup.certs[f"fault{i}"] = setup.ca.issue(f"fault{i}")
    mounted = disk.mount_tmpfs(tmp_path / "a", "8m")
    server = RedisServer(tmp_path / "redis")
    server.start()
    copy = tmp_path / "copy" / "index.txt"
    copy.parent.mkdir()
    shutil.copy(setup.ca.index, copy)
    a = signing_host(tmp_path, setup, server.url, "a")
    until(lambda: "pre-producing for root" in a.log.read_text(), 20)
    b = signing_host(tmp_path, setup, server.url, "b", index=copy)
    filled(a, setup)
    edge = edge_host(tmp_path, setup, server.url)
    until(lambda: ready(edge), 30)
    made = Fleet(tmp_path, setup, server, a, b, edge, copy, mounted)
    try:
        yield made
    finally:
        made.stop()
        server.stop()
        if mounted:
            disk.unmount(tmp_path / "a")


def _revoke(fleet: Fleet, rng: random.Random) -> str:
    left = [n for n in fleet.setup.certs if n.startswith("fault") and n not in fleet.shown]
    if not left:
        return "nothing left to revoke"
    name = rng.choice(left)
    fleet.setup.ca.revoke(fleet.setup.certs[name], "-crl_reason", "keyCompromise")
    fleet.shown[name] = {"a": time.monotonic()}
    if not fleet.lagging:
        fleet.sync_copy()
    return f"revoked {name}"


def _kill_producer(fleet: Fleet, rng: random.Random) -> str:
    host = rng.choice([fleet.a, fleet.b])
    pid = host.producer_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return f"killed the producer of {host.log.stem}"


def _redis_empty(fleet: Fleet, rng: random.Random) -> str:
    fleet.redis.kill()
    (fleet.redis.directory / "dump.rdb").unlink(missing_ok=True)
    fleet.redis.start()
    return "Redis killed, back empty"


def _redis_restore(fleet: Fleet, rng: random.Random) -> str:
    client = redis.Redis(unix_socket_path=str(fleet.redis.socket))
    if rng.random() < 0.5 or not (fleet.redis.directory / "dump.rdb").exists():
        client.save()
        return "Redis snapshot saved"
    fleet.redis.kill()
    fleet.redis.start()  # from the last snapshot: older than what it held
    return "Redis restarted from an older snapshot"


def _disk(fleet: Fleet, rng: random.Random) -> str:
    if not fleet.mounted:  # never fill a real file system
        return "no disk fault (no tmpfs could be mounted)"
    if fleet.full is not None:
        fleet.full.unlink()
        fleet.full = None
        return "host a's state volume freed"
    fleet.full = disk.fill(fleet.tmp / "a")
    return "host a's state volume filled"


def _lag(fleet: Fleet, rng: random.Random) -> str:
    fleet.lagging = not fleet.lagging
    if not fleet.lagging:
        fleet.sync_copy()
    return "host b's index lags" if fleet.lagging else "host b's index caught up"


def _edge_restart(fleet: Fleet, rng: random.Random) -> str:
    fleet.edge.stop()
    fleet.edge = edge_host(fleet.tmp, fleet.setup, fleet.redis.url)
    return "edge restarted"


STEP = {
    "revoke": _revoke,
    "kill_producer": _kill_producer,
    "redis_empty": _redis_empty,
    "redis_restore": _redis_restore,
    "disk": _disk,
    "lag": _lag,
    "edge": _edge_restart,
}


def _check(fleet: Fleet, context: str) -> None:
    now = time.monotonic()
    for name, since in fleet.shown.items():
        cert = x509.load_pem_x509_certificate(fleet.setup.certs[name].read_bytes())
        body = request_for(cert, fleet.setup.ca.certificate, "sha1")
        for host, server in (("a", fleet.a), ("b", fleet.b)):
            status = status_of(server.url, body)
            assert not (isinstance(status, int) and status >= 500), f"{context}: {host} {status}"
            if host in since and now > since[host] + GRACE:
                assert status is not GOOD, f"{context}: host {host} answered {name} good"
        status = status_of(fleet.edge.url, body)
        assert not (isinstance(status, int) and status >= 500), f"{context}: edge {status}"
        if status is REVOKED:
            fleet.edge_revoked.add(name)
        assert not (name in fleet.edge_revoked and status is GOOD), (
            f"{context}: the edge answered {name} good after revoked"
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_no_revoked_certificate_is_answered_good_under_random_faults(
    fleet: Fleet, seed: int
) -> None:
    rng = random.Random(seed)
    done = []
    for step in range(STEPS):
        fault = "revoke" if step % 2 == 0 else rng.choice(sorted(STEP))
        done.append(STEP[fault](fleet, rng))
        time.sleep(1.0)
        _check(fleet, f"seed {seed}, step {step} ({'; '.join(done)})")
    time.sleep(GRACE)  # the last revocations past their grace, on every host that shows them
    _check(fleet, f"seed {seed}, at the end ({'; '.join(done)})")
    print(f"seed {seed}: {'; '.join(done)}")
