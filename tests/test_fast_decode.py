"""The fast request reader answers exactly as the full decoder, or leaves the request to it."""

from __future__ import annotations

import datetime as dt
import random
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hsm_ocsp.core.errors import MalformedRequestError
from hsm_ocsp.core.ocsp import OCSPRequest
from hsm_ocsp.core.request import decode_request, decode_request_fast
from hsm_ocsp.core.request_full import decode_request_full
from hsm_ocsp.server.handlers import decode_get

from .support import fuzz
from .support.fuzz import CERT_ID, wrap_request

SEED = 9919
CASES = 4_000


def _issuer() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fast Decode CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _full(data: bytes, max_cert_ids: int = 64) -> OCSPRequest | None:
    try:
        return decode_request_full(data, max_cert_ids=max_cert_ids)
    except MalformedRequestError:
        return None


def _body(request: bytes) -> bytes | None:
    """The DER an HTTP request of the fuzzer carries (POST body or GET path)."""
    head, _, body = request.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(line) != 3:
        return None
    if line[0] == b"POST":
        return body
    path = line[1].decode("latin-1").lstrip("/")
    return decode_get(path) if path else None


def _bodies() -> list[bytes]:
    """Every DER body of CASES fuzz cases, and for each a few mutations of it."""
    issuer = _issuer()
    target = fuzz.Target("root", issuer, issuer, {1: fuzz.C.GOOD, 2: fuzz.C.REVOKED})
    rng = random.Random(SEED)
    out = []
    for _, (_, case) in zip(range(CASES), fuzz.cases(SEED, target), strict=False):
        body = _body(case.request)
        if body is None:
            continue
        out.append(body)
        for _ in range(3):
            mutated = bytearray(body)
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            out.append(bytes(mutated))
        if len(body) > 2:
            out.append(body[: rng.randrange(1, len(body))])
    return out


def test_fast_reader_agrees_with_the_full_decoder_on_the_fuzz_cases() -> None:
    bodies = _bodies()
    fast_count = full_count = 0
    for body in bodies:
        full = _full(body)
        fast = decode_request_fast(body)
        full_count += full is not None
        if fast is not None:
            fast_count += 1
            assert fast == full, body.hex()
        # and what the responder uses is the full decoder's answer, or its refusal
        if not body:
            continue
        if full is None:
            with pytest.raises(MalformedRequestError):
                decode_request(body)
        else:
            assert decode_request(body) == full, body.hex()
    # The fast reader must carry the common case, or it is only more code.
    assert full_count > 1_000
    assert fast_count > full_count // 2, (fast_count, full_count)


def test_fast_reader_leaves_more_cert_ids_than_allowed_to_the_full_decoder() -> None:
    issuer = _issuer()
    target = fuzz.Target("root", issuer, issuer, {})
    body = fuzz.ocsp_request([fuzz.cert_id(target, n) for n in range(1, 4)])
    assert decode_request_fast(body, max_cert_ids=3) is not None
    assert decode_request_fast(body, max_cert_ids=2) is None
    with pytest.raises(MalformedRequestError):
        decode_request(body, max_cert_ids=2)


@pytest.mark.parametrize(
    "extensions",
    [
        "",  # no extensions
        "a2163014301206092b06010505073001020405040300ff00",  # nonce, critical FALSE: full decoder
        "a2133011300f06092b0601050507300104040230" + "00",  # acceptable responses (bad)
        "a2023000",  # empty extension list
    ],
)
def test_fast_reader_and_full_decoder_agree_on_extension_shapes(extensions: str) -> None:
    body = wrap_request(CERT_ID, bytes.fromhex(extensions))
    fast = decode_request_fast(body)
    assert fast is None or fast == _full(body)


def test_nonce_request_takes_the_fast_path() -> None:
    oid = bytes.fromhex("06092b0601050507300102")
    value = fuzz._tlv(0x04, fuzz._tlv(0x04, b"n" * 32))
    body = wrap_request(CERT_ID, fuzz._tlv(0xA2, fuzz._tlv(0x30, fuzz._tlv(0x30, oid + value))))
    fast = decode_request_fast(body)
    assert fast is not None and fast.nonce == bytes(fuzz._tlv(0x04, b"n" * 32))
    assert fast == _full(body)


def test_get_path_of_the_fuzzer_decodes() -> None:
    assert _body(b"GET /" + urllib.parse.quote("MA==").encode() + b" HTTP/1.1\r\n\r\n") == b"0"
