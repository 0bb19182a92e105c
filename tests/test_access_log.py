"""One access log line per request, as text or JSON, without the PIN or the request."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hsm_ocsp.core.model import CertStatus, OCSPResponseStatus
from hsm_ocsp.core.reply import Reply
from hsm_ocsp.server.access_log import AccessLogger
from hsm_ocsp.server.app_keys import REPLY
from hsm_ocsp.server.per_turn import log_lines_once_a_turn

from .support.ca import build_ca, write_config
from .support.http_client import UNKNOWN_SERIAL, get_path, http
from .support.requests import build_request
from .support.server import RunningServer, free_port
from .support.softhsm import PIN, SoftHSM


def run_requests(
    tmp_path: Path, softhsm: SoftHSM, serve: Callable[..., RunningServer], log_format: str
) -> tuple[str, int, list[str]]:
    """Serve, send good GET (twice), revoked+unknown POST, malformed POST.

    Returns the server's log, the GET path length and what must not be logged.
    """
    setup = build_ca(tmp_path / "ca", softhsm)
    port = free_port()
    config = write_config(
        tmp_path / "hsm-ocsp.toml",
        {"root": setup},
        server=f'log_format = "{log_format}"',
        port=port,
        producer="pre_produce = false",  # the first GET is signed, the second cached
    )
    server = serve(config, port, tmp_path / "server.log")
    issuer = setup.ca.certificate
    good = build_request([(issuer, setup.serial("good"))])
    pair = build_request([(issuer, setup.serial("revoked")), (issuer, UNKNOWN_SERIAL)])
    encoded = get_path(good)
    assert http(server.url + "root/" + encoded)[0] == 200
    assert http(server.url + "root/" + encoded)[0] == 200
    assert http(server.url, pair)[0] == 200
    assert http(server.url, b"junk")[0] == 200
    server.stop()  # the log is complete once the process has ended
    secrets = [PIN, encoded, base64.b64encode(good).decode(), base64.b64encode(pair).decode()]
    return server.log.read_text(), len("/root/" + encoded), secrets


def test_json_access_log_has_one_line_per_request(
    tmp_path: Path, softhsm: SoftHSM, serve: Callable[..., RunningServer]
) -> None:
    text, get_length, secrets = run_requests(tmp_path, softhsm, serve, "json")
    for secret in secrets:
        assert secret not in text
    entries: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line]
    access = [e for e in entries if e["logger"] == "hsm_ocsp.access"]
    ocsp = [e for e in access if e["ocsp_status"] is not None]
    assert [e["method"] for e in ocsp] == ["GET", "GET", "POST", "POST"]
    get1, get2, pair, junk = ocsp
    assert get1["ca"] == "root" and get1["http_status"] == 200
    assert get1["ocsp_status"] == "successful" and get1["cert_statuses"] == ["good"]
    assert get1["cached"] is False and get2["cached"] is True
    assert get1["path_length"] == get_length
    assert pair["ca"] is None and pair["cert_statuses"] == ["revoked", "unknown"]
    assert junk["ocsp_status"] == "malformedRequest" and junk["cert_statuses"] == []
    for entry in ocsp:
        assert entry["time"] and entry["level"] == "info"
        assert isinstance(entry["duration_ms"], float) and 0 < entry["duration_ms"] < 10_000
        assert entry["remote"] == "127.0.0.1"
    # The readiness polls of the test fixture are logged too, without OCSP fields.
    ready = [e for e in access if e["ocsp_status"] is None]
    assert ready and all(e["path_length"] == len("/readyz") for e in ready)


TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO hsm_ocsp\.access: "
    r"(?P<method>[A-Z]+) ca=(?P<ca>\S+) path_length=(?P<len>\d+) http=(?P<http>\d+) "
    r"ocsp=(?P<ocsp>\S+) certs=(?P<certs>\S+) cached=(?P<cached>yes|no) "
    r"(?P<ms>\d+\.\d{3})ms remote=127\.0\.0\.1$"
)


def test_text_access_log_has_one_line_per_request(
    tmp_path: Path, softhsm: SoftHSM, serve: Callable[..., RunningServer]
) -> None:
    text, get_length, secrets = run_requests(tmp_path, softhsm, serve, "text")
    for secret in secrets:
        assert secret not in text
    lines = [line for line in text.splitlines() if "hsm_ocsp.access" in line]
    matches = [TEXT_LINE.match(line) for line in lines]
    assert all(matches), lines
    ocsp = [m.groupdict() for m in matches if m and m["ocsp"] != "-"]
    assert ocsp[0]["len"] == str(get_length)
    assert [
        (m["method"], m["ca"], m["http"], m["ocsp"], m["certs"], m["cached"]) for m in ocsp
    ] == [
        ("GET", "root", "200", "successful", "good", "no"),
        ("GET", "root", "200", "successful", "good", "yes"),
        ("POST", "-", "200", "successful", "revoked,unknown", "no"),
        ("POST", "-", "200", "malformedRequest", "-", "no"),
    ]


def test_access_log_record_has_what_logger_makerecord_gives() -> None:
    """A logger with a handler of its own gets records through ``logging``, as made there."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    class Request(dict[object, object]):
        method = "GET"
        raw_path = "/root/MEow"
        remote = "127.0.0.1"

    class Response:
        status = 200

    logger = logging.getLogger("hsm_ocsp.access.template-test")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    reply = Reply(b"x", OCSPResponseStatus.SUCCESSFUL, "root", (CertStatus.GOOD,), cached=True)
    for _ in range(2):
        access = AccessLogger(logger, "")
        access.log(Request({REPLY: reply}), Response(), 0.0015)  # type: ignore[arg-type]
    expected = logger.makeRecord(
        logger.name, logging.INFO, "(unknown file)", 0, "", (), None, "(unknown function)"
    )
    for record in records:
        assert set(vars(record)) == set(vars(expected)) | {"fields"}
        for name in ("levelname", "pathname", "module", "thread", "process", "processName"):
            assert getattr(record, name) == getattr(expected, name)
        assert abs(record.created - expected.created) < 5
        assert record.getMessage() == (
            "GET ca=- path_length=10 http=200 ocsp=successful certs=good cached=yes "
            "1.500ms remote=127.0.0.1"
        )
        assert record.fields["cert_statuses"] == ["good"]  # type: ignore[attr-defined]
    assert records[0].created <= records[1].created


async def test_log_lines_of_a_loop_turn_are_written_when_the_turn_ends() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    log = logging.getLogger("hsm_ocsp.turn-test")
    try:
        with log_lines_once_a_turn(asyncio.get_running_loop()):
            log.warning("one")
            log.warning("two")
            assert stream.getvalue() == ""
            await asyncio.sleep(0)  # the turn ends
            assert stream.getvalue() == "one\ntwo\n"
            log.warning("three")
            await asyncio.to_thread(log.warning, "four")  # another thread: at once, in order
            assert stream.getvalue() == "one\ntwo\nthree\nfour\n"
            log.warning("five")
        assert stream.getvalue() == "one\ntwo\nthree\nfour\nfive\n"  # serving ended
        assert handler.stream is stream
    finally:
        root.removeHandler(handler)


def test_log_time_worked_out_once_a_second_reads_as_loggings_own() -> None:
    import random

    from hsm_ocsp.core.logs import JsonFormatter, TextFormatter

    text = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    stock, ours, ours_json = logging.Formatter(text), TextFormatter(text), JsonFormatter()
    rng = random.Random(5)
    for i in range(5000):  # times that cross many seconds, back and forth
        record = logging.LogRecord("hsm_ocsp.access", logging.INFO, "f", 1, "n=%d", (i,), None)
        record.created = 1_800_000_000 + rng.random() * 20
        record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
        assert ours.format(record) == stock.format(record)
        iso = stock.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        assert json.loads(ours_json.format(record))["time"] == iso


def _access_line(logger: logging.Logger) -> None:
    class Request(dict[object, object]):
        method = "POST"
        raw_path = "/"
        remote = "127.0.0.1"

    class Response:
        status = 200

    reply = Reply(b"x", OCSPResponseStatus.SUCCESSFUL, "root", (CertStatus.GOOD,), cached=True)
    AccessLogger(logger, "").log(Request({REPLY: reply}), Response(), 0.0015)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_direct_access_line_reads_as_the_logging_path_writes_it(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set up as ``serve`` does, the line skips ``logging`` but must not differ."""
    from hsm_ocsp.core.logs import direct_handler, setup_logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging(fmt)
    logger = logging.getLogger("hsm_ocsp.access.direct-test")
    handler = direct_handler(logger)
    assert handler is not None and handler is root.handlers[0]
    _access_line(logger)  # the direct path
    refuse = logging.Filter("nothing")  # a filter anywhere sends lines through logging
    logger.addFilter(refuse)
    assert direct_handler(logger) is None
    _access_line(logger)  # filtered out by logging itself
    logger.removeFilter(refuse)
    keep = logging.Filter()
    root.addFilter(keep)  # passes everything, but it could change records: logging path
    assert direct_handler(logger) is None
    _access_line(logger)
    root.removeFilter(keep)
    direct, through_logging = stream.getvalue().splitlines()
    if fmt == "json":
        a, b = json.loads(direct), json.loads(through_logging)
        assert abs(dt.datetime.fromisoformat(a.pop("time")).timestamp() - time.time()) < 5
        b.pop("time")
        assert a == b and a["logger"] == "hsm_ocsp.access.direct-test"
    else:
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
        assert re.fullmatch(stamp + r"INFO hsm_ocsp\.access\.direct-test: POST .*", direct)
        assert direct[24:] == through_logging[24:]


async def test_access_lines_of_a_loop_turn_are_written_together_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Served as ``serve`` sets it up, a turn's lines wait for the turn's end, each with
    the time it was logged at, and read as the logging path writes them."""
    from hsm_ocsp.core.logs import setup_logging
    from hsm_ocsp.server.access_log import write_access_lines

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging("text")
    logger = logging.getLogger("hsm_ocsp.access.turn-test")
    with log_lines_once_a_turn(asyncio.get_running_loop()):
        _access_line(logger)
        time.sleep(0.003)  # the second line's millisecond differs
        _access_line(logger)
        assert stream.getvalue() == ""  # the turn goes on
        await asyncio.sleep(0)
        first, second = stream.getvalue().splitlines()
        assert first[:23] < second[:23] and first[24:] == second[24:]
        _access_line(logger)
        write_access_lines()  # serving ends: what is kept is written now
        assert len(stream.getvalue().splitlines()) == 3
        keep = logging.Filter()
        root.addFilter(keep)  # the logging path, for the same request
        _access_line(logger)
        root.removeFilter(keep)
        await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[3][24:] == first[24:]
    assert re.fullmatch(
        r"INFO hsm_ocsp\.access\.turn-test: POST ca=- .* remote=127\.0\.0\.1", first[24:]
    )


def test_a_reply_carries_what_each_answer_needs_worked_out_once() -> None:
    """Headers and log text live on the Reply (no memo keyed on its identity): served
    again, it costs nothing more; ``cached`` says only where it came from."""
    import dataclasses

    from hsm_ocsp.core.model import CertStatus, OCSPResponseStatus
    from hsm_ocsp.core.reply import UNSUCCESSFUL, Reply

    produced = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
    signed = Reply(
        b"0",
        OCSPResponseStatus.SUCCESSFUL,
        "root",
        (CertStatus.REVOKED,),
        produced,
        produced + dt.timedelta(hours=1),
        '"e"',
    )
    assert signed.log_text == "ocsp=successful certs=revoked cached=no"
    headers = signed.headers()
    assert headers is signed.headers()  # worked out once
    assert headers.post == {
        "ETag": '"e"',
        "Last-Modified": "Sat, 05 Dec 2026 12:00:00 GMT",
        "Expires": "Sat, 05 Dec 2026 13:00:00 GMT",
    }
    at = produced.timestamp() + 600
    assert headers.get(at)["Cache-Control"].startswith("max-age=3000, public")
    assert headers.get(at + 1)["Cache-Control"].startswith("max-age=2999, public")
    stored = dataclasses.replace(signed, cached=True)  # the same answer, from the store
    assert stored.log_text == "ocsp=successful certs=revoked cached=yes"
    assert stored.headers() is not headers and stored.headers().post == headers.post
    malformed = UNSUCCESSFUL[OCSPResponseStatus.MALFORMED_REQUEST]
    assert malformed.log_text == "ocsp=malformedRequest certs=- cached=no"
    assert malformed.headers().get(at) == {"Cache-Control": "no-cache"}
