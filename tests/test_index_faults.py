"""A damaged index never replaces the last good snapshot.

Each fault is made on the real file under a running application; the watcher's
own ``check()`` runs, the log must name the file (and the line where there is
one), the revoked certificate must stay revoked, and the next good file, written
the way ``openssl ca`` writes it (new file, rename), must be taken up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.x509 import ocsp
from pytest_aiohttp import AiohttpClient

from hsm_ocsp.config.file import load_config
from hsm_ocsp.server.app import create_app
from hsm_ocsp.server.app_state import HOST

from .support.ca import CASetup, build_ca, write_config
from .support.events import Heard
from .support.softhsm import SoftHSM

Fault = Callable[[Path, bytes], int | None]  # damages the file; returns the bad line

Client = TestClient[web.Request, web.Application]


def _truncated_last_line(path: Path, good: bytes) -> int | None:
    path.write_bytes(good[:-7])
    return good.count(b"\n")


def _wrong_field_count(path: Path, good: bytes) -> int | None:
    path.write_bytes(good + b"V\t301231235959Z\t\t0ABC\t/CN=five fields\n")
    return good.count(b"\n") + 1


def _bad_date(path: Path, good: bytes) -> int | None:
    path.write_bytes(good + b"V\t301332235959Z\t\t0ABC\tunknown\t/CN=month 13\n")
    return good.count(b"\n") + 1


def _unknown_reason(path: Path, good: bytes) -> int | None:
    line = b"R\t301231235959Z\t251124011953Z,stolenByPirates\t0ABC\tunknown\t/CN=x\n"
    path.write_bytes(good + line)
    return good.count(b"\n") + 1


def _binary(path: Path, good: bytes) -> int | None:
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + os.urandom(2048) + b"\n")
    return 1


def _deleted(path: Path, good: bytes) -> int | None:
    path.unlink()
    return None


def _half_written(path: Path, good: bytes) -> int | None:
    """A writer that rewrites in place and has written half of the file."""
    cut = good.index(b"\t", len(good) // 2)  # mid-line
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(good[:cut])
    return good[:cut].count(b"\n") + 1


def _emptied(path: Path, good: bytes) -> int | None:
    """The same writer, caught after truncating and before writing."""
    path.write_bytes(b"")
    return None


def _directory(path: Path, good: bytes) -> int | None:
    """Unreadable even for root: a directory where the file was."""
    path.unlink()
    path.mkdir()
    return None


def _fifo(path: Path, good: bytes) -> int | None:
    """A FIFO with no writer: reading it would block the watcher forever."""
    path.unlink()
    os.mkfifo(path)
    return None


def _unreadable(path: Path, good: bytes) -> int | None:
    path.chmod(0)
    return None


FAULTS: dict[str, Fault] = {
    "truncated-last-line": _truncated_last_line,
    "wrong-field-count": _wrong_field_count,
    "bad-date": _bad_date,
    "unknown-reason": _unknown_reason,
    "binary": _binary,
    "deleted": _deleted,
    "half-written": _half_written,
    "emptied": _emptied,
    "directory": _directory,
    "fifo": _fifo,
}


def _replace_atomically(path: Path, data: bytes) -> None:
    """As ``openssl ca`` does: write ``index.txt.new``, rename over the old name."""
    if path.is_dir():
        path.rmdir()
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    os.replace(new, path)


async def _cert_status(client: Client, setup: CASetup, name: str) -> set[ocsp.OCSPCertStatus]:
    """The status answered with and without a nonce (fresh and cached paths)."""
    found = set()
    for nonce in (None, os.urandom(16)):
        response = await client.post("/", data=setup.request(name, nonce=nonce))
        assert response.status == 200
        parsed = ocsp.load_der_ocsp_response(await response.read())
        assert parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        found.add(parsed.certificate_status)
    return found


@pytest.fixture
def index_setup(tmp_path: Path, softhsm: SoftHSM) -> tuple[CASetup, bytes, bytes, Path]:
    """A CA, its index now (``good`` is good), and the next index (``good`` revoked)."""
    setup = build_ca(tmp_path / "ca", softhsm)
    before = setup.ca.index.read_bytes()
    setup.ca.revoke(setup.certs["good"], "-crl_reason", "superseded")
    after = setup.ca.index.read_bytes()
    _replace_atomically(setup.ca.index, before)
    config = write_config(tmp_path / "config.toml", {"root": setup})
    return setup, before, after, config


async def _reload_errors(client: Client) -> float:
    """``hsm_ocsp_index_reload_errors_total{ca="root"}`` from /metrics."""
    text = await (await client.get("/metrics")).text()
    line = next(x for x in text.splitlines() if x.startswith("hsm_ocsp_index_reload_errors_total{"))
    assert 'ca="root"' in line
    return float(line.rsplit(" ", 1)[1])


async def _check(client: Client) -> bool:
    """Two ticks of the watcher: a file changed in place is read on the second."""
    source = client.app[HOST].sources["root"]
    loop = asyncio.get_running_loop()
    first = await asyncio.wait_for(loop.run_in_executor(None, source.check), 10)
    return first or await asyncio.wait_for(loop.run_in_executor(None, source.check), 10)


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
async def test_damaged_index_keeps_last_good_snapshot_and_takes_up_next_good_file(
    fault: str,
    index_setup: tuple[CASetup, bytes, bytes, Path],
    aiohttp_client: AiohttpClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    setup, before, after, config = index_setup
    client: Client = await aiohttp_client(create_app(load_config(config)))
    source = client.app[HOST].sources["root"]
    snapshot = source.snapshot
    assert await _cert_status(client, setup, "revoked") == {ocsp.OCSPCertStatus.REVOKED}
    assert await _cert_status(client, setup, "good") == {ocsp.OCSPCertStatus.GOOD}

    caplog.set_level(logging.ERROR, logger="hsm_ocsp.index")
    errors_before = await _reload_errors(client)
    line = FAULTS[fault](setup.ca.index, before)
    assert await _check(client) is False
    assert await _reload_errors(client) == errors_before + 1
    assert source.snapshot is snapshot, "a damaged file replaced the last good snapshot"
    where = f"{setup.ca.index}:{line}:" if line is not None else f"{setup.ca.index}:"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(where in message for message in errors), errors
    assert await _cert_status(client, setup, "revoked") == {ocsp.OCSPCertStatus.REVOKED}
    assert await _cert_status(client, setup, "good") == {ocsp.OCSPCertStatus.GOOD}
    ready = await client.get("/readyz")
    assert ready.status == 200  # the last good snapshot is a loaded index

    # The same damage is reported once, not every second.
    caplog.clear()
    assert await _check(client) is False
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    _replace_atomically(setup.ca.index, after)
    assert await _check(client) is True
    assert source.snapshot is not snapshot and source.last_error is None
    assert await _cert_status(client, setup, "good") == {ocsp.OCSPCertStatus.REVOKED}
    assert await _cert_status(client, setup, "revoked") == {ocsp.OCSPCertStatus.REVOKED}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; see 'directory'")
async def test_unreadable_index_keeps_last_good_snapshot(
    index_setup: tuple[CASetup, bytes, bytes, Path],
    aiohttp_client: AiohttpClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    setup, before, after, config = index_setup
    client: Client = await aiohttp_client(create_app(load_config(config)))
    source = client.app[HOST].sources["root"]
    snapshot = source.snapshot
    caplog.set_level(logging.ERROR, logger="hsm_ocsp.index")
    _unreadable(setup.ca.index, before)
    os.utime(setup.ca.index)
    assert await _check(client) is False
    assert source.snapshot is snapshot
    assert any("Permission denied" in r.getMessage() for r in caplog.records)
    _replace_atomically(setup.ca.index, after)
    assert await _check(client) is True


async def test_watcher_notices_damage_and_repair_by_itself(
    index_setup: tuple[CASetup, bytes, bytes, Path],
    aiohttp_client: AiohttpClient,
) -> None:
    """No direct ``check()``: the application's own 1 s watcher does the work."""
    setup, _before, after, config = index_setup
    client: Client = await aiohttp_client(create_app(load_config(config)))
    source = client.app[HOST].sources["root"]
    snapshot = source.snapshot
    _half_written(setup.ca.index, after)
    for _ in range(60):
        if source.last_error is not None:
            break
        await asyncio.sleep(0.1)
    assert source.last_error is not None and str(setup.ca.index) in source.last_error
    assert source.snapshot is snapshot
    assert await _cert_status(client, setup, "revoked") == {ocsp.OCSPCertStatus.REVOKED}
    _replace_atomically(setup.ca.index, after)
    for _ in range(60):
        if source.snapshot is not snapshot:
            break
        await asyncio.sleep(0.1)
    assert source.last_error is None
    assert await _cert_status(client, setup, "good") == {ocsp.OCSPCertStatus.REVOKED}


def test_the_gap_between_openssl_ca_renames_is_not_an_error(tmp_path: Path) -> None:
    """openssl ca renames index.txt away, then index.txt.new in: no file for a moment."""
    import threading

    from hsm_ocsp.server.index_source import RENAME_GRACE, IndexSource

    index = tmp_path / "index.txt"
    index.write_text("V\t301231235959Z\t\t01\tunknown\t/CN=a\n")
    heard = Heard()
    source = IndexSource("root", index, events=heard)
    source.load()
    errors = heard.errors
    index.rename(tmp_path / "index.txt.old")
    (tmp_path / "index.txt.new").write_text(
        "R\t301231235959Z\t261124011953Z,keyCompromise\t01\tunknown\t/CN=a\n"
    )
    later = threading.Timer(RENAME_GRACE / 4, (tmp_path / "index.txt.new").rename, [index])
    later.start()
    try:
        assert source.check()  # saw the gap, looked again, took the new file
    finally:
        later.join()
    assert errors == []
    assert source.snapshot is not None and source.snapshot.entries[1] is not None
