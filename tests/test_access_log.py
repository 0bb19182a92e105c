"""One access log line per request, as text or JSON, without the PIN or the request."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import PIN, RunningServer, SoftHSM, build_ca, free_port, write_config
from .requests import build_request
from .test_metrics import UNKNOWN_SERIAL, get_path, http


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
