"""No answer outlives the certificate that signs it, and none is signed outside its life.

Issue 15, items 1 and 2, on a real server and token: a responder certificate that
expires in 10 minutes caps nextUpdate; one that has expired, or is not valid yet,
makes its CA answer tryLater (never a signature) and /readyz 503.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .conftest import CASetup, SoftHSM, build_ca, free_port, start_server, write_config


def _ask(url: str, setup: CASetup, name: str) -> ocsp.OCSPResponse:
    cert = x509.load_pem_x509_certificate(setup.certs[name].read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, setup.ca.certificate, hashes.SHA256())
    req = urllib.request.Request(
        url,
        data=builder.build().public_bytes(Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read())


def _ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _with_responder(
    tmp_path: Path, softhsm: SoftHSM, not_before: dt.datetime, not_after: dt.datetime
) -> tuple[CASetup, Path, int]:
    setup = build_ca(tmp_path / "ca", softhsm)
    cert = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes())  # type: ignore[union-attr]
    setup.responder_cert = setup.ca.sign_responder(
        cert.public_key(), "Short Responder", not_before=not_before, not_after=not_after
    )
    port = free_port()
    config = write_config(tmp_path / "config.toml", {"root": setup}, port=port, validity='"1h"')
    return setup, config, port


def test_next_update_is_capped_by_a_responder_certificate_expiring_in_10_minutes(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(minutes=10)
    setup, config, port = _with_responder(tmp_path, softhsm, now - dt.timedelta(hours=1), not_after)
    server = start_server(config, port, tmp_path / "server.log")
    try:
        response = _ask(server.url, setup, "good")
        assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.next_update_utc == not_after  # not thisUpdate + 1 h
        assert response.this_update_utc + dt.timedelta(minutes=11) > not_after
        with urllib.request.urlopen(server.url + "metrics", timeout=5) as page:
            assert 'hsm_ocsp_validity_capped{ca="root"} 1.0' in page.read().decode()
    finally:
        server.stop()
    assert server.log.read_text().count("nextUpdate cut to the signing certificate") == 1


def test_try_later_never_a_signature_once_the_only_responder_certificate_expired(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    now = dt.datetime.now(dt.UTC)
    not_after = (now + dt.timedelta(seconds=8)).replace(microsecond=0)
    setup, config, port = _with_responder(tmp_path, softhsm, now - dt.timedelta(hours=1), not_after)
    server = start_server(config, port, tmp_path / "server.log")
    try:
        before = _ask(server.url, setup, "revoked")
        assert before.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert before.next_update_utc == not_after
        time.sleep(max(0.0, not_after.timestamp() - time.time() + 0.5))
        for name in ("revoked", "good", "revoked"):  # a cached one included
            after = _ask(server.url, setup, name)
            assert after.response_status is ocsp.OCSPResponseStatus.TRY_LATER, name
        assert _ready(server.url) == 503
    finally:
        server.stop()
    log = server.log.read_text()
    assert log.count("the signing certificate expired") == 1  # once a minute, not a request


def test_try_later_while_the_responder_certificate_is_not_valid_yet(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    now = dt.datetime.now(dt.UTC)
    setup, config, port = _with_responder(
        tmp_path, softhsm, now + dt.timedelta(days=1), now + dt.timedelta(days=30)
    )
    server = start_server(config, port, tmp_path / "server.log", ready=False)
    try:
        response = _ask(server.url, setup, "good")
        assert response.response_status is ocsp.OCSPResponseStatus.TRY_LATER
        assert _ready(server.url) == 503
    finally:
        server.stop()
    assert "is not valid before" in server.log.read_text()


def test_rule_29_refresh_at_half_under_16h_else_8h_before_and_within_4_days() -> None:
    from hsm_ocsp.service import refresh_time

    start = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    hours = dt.timedelta(hours=1)
    assert refresh_time(start, start + 1 * hours) == start + 0.5 * hours
    assert refresh_time(start, start + 15 * hours) == start + 7.5 * hours
    assert refresh_time(start, start + 16 * hours) == start + 8 * hours  # 8 h before
    assert refresh_time(start, start + 24 * hours) == start + 16 * hours
    assert refresh_time(start, start + 7 * 24 * hours) == start + 4 * 24 * hours  # BR 4.9.10
    assert refresh_time(start, start + 10 * 24 * hours) == start + 4 * 24 * hours
