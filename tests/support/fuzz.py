#!/usr/bin/env python3
"""Fuzz the whole HTTP path of hsm-ocsp: never a 5xx, every OCSP answer right.

Each case is a raw HTTP/1.1 request (valid, mutated or hostile) with what a
correct responder must answer. The oracle is the CA's own files: a successful
answer must carry one SingleResponse per CertID, each exactly the status the
index gives (never "good" for a serial the index lacks), a verifiable
signature and the nonce echoed; an error answer must be the right OCSP status,
unsigned and not cacheable.

    python scripts/fuzz.py --config hsm-ocsp.toml --url http://127.0.0.1:8080/ \\
        --cases 1000000 --concurrency 8

With ``--serve`` the script starts ``hsm-ocsp serve --config`` itself (the
PIN comes from the environment as usual) and stops it at the end. Exit code 0
when every case passed, 1 otherwise; failures are printed with the seed and
case number to replay them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import os
import random
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import OCSPExtensionOID

HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
HASH_NAMES = {oid: name for name, oid in HASH_OIDS.items()}
NONCE_OID = "1.3.6.1.5.5.7.48.1.2"
OCSP_TYPE = "application/ocsp-response"
S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus


@dataclasses.dataclass(frozen=True)
class Target:
    """What the fuzzer knows of the responder: one CA, its index, its limits."""

    name: str
    issuer: x509.Certificate
    signer: x509.Certificate  # the certificate whose key signs the answers
    statuses: dict[int, C]  # serial -> GOOD or REVOKED, from the index
    max_request_bytes: int = 10 * 1024
    max_cert_ids: int = 64
    max_line: int = 8190
    unknown_as_revoked: bool = False
    # A keyless edge: what its store lacks is tryLater, and a nonce is not echoed (it
    # serves the stored answer); what it does answer must still be right.
    edge: bool = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Target:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from hsm_ocsp.config.file import load_config
        from hsm_ocsp.core.index import parse_index

        config = load_config(path)
        ca = config.cas[0]
        snapshot = parse_index(ca.index.read_bytes(), ca.index)
        return cls(
            name=ca.name,
            issuer=ca.certificate,
            signer=ca.responder_certificate or ca.certificate,
            statuses={s: C.GOOD if r is None else C.REVOKED for s, r in snapshot.entries.items()},
            max_request_bytes=config.server.max_request_bytes,
            max_cert_ids=config.server.max_cert_ids,
            unknown_as_revoked=ca.unknown_serials == "revoked",
        )

    _hashes: dict[str, tuple[bytes, bytes]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    def hashes(self, algorithm: str) -> tuple[bytes, bytes]:
        """(issuerNameHash, issuerKeyHash) of this CA with ``algorithm``."""
        if algorithm not in self._hashes:
            self._hashes[algorithm] = self._compute_hashes(algorithm)
        return self._hashes[algorithm]

    def _compute_hashes(self, algorithm: str) -> tuple[bytes, bytes]:
        spki = self.issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        bits = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]
        return (
            hashlib.new(algorithm, self.issuer.subject.public_bytes()).digest(),
            hashlib.new(algorithm, bits).digest(),
        )

    def expected(self, name_hash: bytes, key_hash: bytes, algorithm: str, serial: int) -> C:
        if algorithm not in HASH_OIDS or (name_hash, key_hash) != self.hashes(algorithm):
            return C.UNKNOWN  # a CertID of a CA not served here
        if serial in self.statuses:
            return self.statuses[serial]
        return C.REVOKED if self.unknown_as_revoked else C.UNKNOWN


@dataclasses.dataclass
class Case:
    kind: str
    request: bytes  # the whole HTTP request
    ocsp_status: frozenset[S] | None = None  # expected when HTTP 200; None: not 200
    http: frozenset[int] = frozenset({200})
    cert_ids: int | None = None  # SingleResponses expected when successful
    nonce: bytes | None = None  # echo expected (the extnValue content)
    head: bool = False


# --- building requests ------------------------------------------------------


def cert_id(target: Target, serial: int, algorithm: str = "sha256") -> bytes:
    name_hash, key_hash = target.hashes(algorithm)
    return raw_cert_id(HASH_OIDS[algorithm], name_hash, key_hash, serial)


def raw_cert_id(oid: str, name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """DER CertID, built by hand: asn1crypto is too slow for a million cases."""
    size = ((serial if serial >= 0 else -serial - 1).bit_length() + 8) // 8
    algorithm = _tlv(0x30, asn1_core.ObjectIdentifier(oid).dump() + b"\x05\x00")
    return _tlv(
        0x30,
        algorithm
        + _tlv(0x04, name_hash)
        + _tlv(0x04, key_hash)
        + _tlv(0x02, serial.to_bytes(size, "big", signed=True)),
    )


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def ocsp_request(cert_ids: list[bytes], nonce: bytes | None = None) -> bytes:
    """DER OCSPRequest; ``nonce`` is the raw extnValue content, well formed or not."""
    request_list = _tlv(0x30, b"".join(_tlv(0x30, c) for c in cert_ids))
    tbs = request_list
    if nonce is not None:
        oid: bytes = asn1_core.ObjectIdentifier(NONCE_OID).dump()
        extension = _tlv(0x30, oid + _tlv(0x04, nonce))
        tbs += _tlv(0xA2, _tlv(0x30, extension))
    return _tlv(0x30, _tlv(0x30, tbs))


def post(path: str, body: bytes, content_type: str | None = "application/ocsp-request") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1")


# A SHA-1 CertID for serial 0x1001 (the tests mutate it byte by byte).
CERT_ID = (
    bytes.fromhex("303b300906052b0e03021a0500")
    + b"\x04\x14"
    + b"n" * 20
    + b"\x04\x14"
    + b"k" * 20
    + bytes.fromhex("02021001")
)


def wrap_request(cert_id: bytes, extensions: bytes = b"") -> bytes:
    """OCSPRequest { TBSRequest { requestList { Request { cert_id } } [extensions] } }."""
    tlv = _tlv
    return bytes(tlv(0x30, tlv(0x30, tlv(0x30, tlv(0x30, cert_id)) + extensions)))


def _serial(rng: random.Random, target: Target) -> int:
    known = list(target.statuses)
    choice = rng.random()
    if choice < 0.6 and known:
        return rng.choice(known)
    if choice < 0.8:
        return rng.randrange(1, 1 << 64)
    return rng.choice([0, 1, -1, 1 << 159, -(1 << 70), rng.randrange(1 << 20)])


def _valid(rng: random.Random, target: Target, count: int = 1) -> list[bytes]:
    return [
        cert_id(target, _serial(rng, target), rng.choice(list(HASH_OIDS))) for _ in range(count)
    ]


def _nonce_value(length: int, rng: random.Random) -> bytes:
    value: bytes = asn1_core.OctetString(rng.randbytes(length)).dump()
    return value


def _get_paths(der: bytes, rng: random.Random, target: Target) -> str:
    text = base64.b64encode(der).decode()
    variant = rng.randrange(6)
    if variant == 1:
        text = urllib.parse.quote(text, safe="")  # %2B %2F %3D
    elif variant == 2:
        text = text.rstrip("=")
    elif variant == 3:
        text = base64.urlsafe_b64encode(der).decode()
    elif variant == 4:
        text = "".join(urllib.parse.quote(c, safe="") if rng.random() < 0.5 else c for c in text)
    prefix = rng.choice(["/", "//", f"/{target.name}/", f"/{target.name}//"])
    return prefix + text


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out += rng.randbytes(rng.randint(1, 8))
        op = rng.randrange(7)
        i = rng.randrange(len(out))
        if op == 0:
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[i] = rng.randrange(256)
        elif op == 2:
            out.insert(i, rng.randrange(256))
        elif op == 3:
            del out[i : i + rng.randint(1, 16)]
        elif op == 4:
            del out[i:]
        elif op == 5:
            out += rng.randbytes(rng.randint(1, 32))
        else:
            j = rng.randrange(len(out))
            out[i:i] = out[j : j + rng.randint(1, 32)]
    return bytes(out)


ANY_OCSP = frozenset({S.SUCCESSFUL, S.MALFORMED_REQUEST, S.UNAUTHORIZED})
MALFORMED = frozenset({S.MALFORMED_REQUEST})
OK = frozenset({S.SUCCESSFUL})
BAD_HTTP = frozenset({400, 404, 405, 413, 414, 431})


# Each kind of case and its weight among them.
KINDS = {
    "post": 10,
    "get": 10,
    "random": 12,
    "mutated": 20,
    "mutated-get": 6,
    "cert-ids": 5,
    "nonce": 6,
    "content-type": 4,
    "huge": 2,
    "empty": 2,
    "bad-base64": 5,
    "foreign-ca": 4,
    "long-line": 1,
    "bad-http": 5,
    "method": 2,
    "head": 2,
}


def make_case(rng: random.Random, target: Target) -> Case:
    """One random case with its expected answer."""
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    limit = target.max_request_bytes
    if kind == "post":
        n = rng.randint(1, 3)
        der = ocsp_request(_valid(rng, target, n))
        path = rng.choice(["/", f"/{target.name}/"])
        return Case(kind, post(path, der), OK, cert_ids=n)
    if kind == "get":
        der = ocsp_request(_valid(rng, target))
        return Case(kind, get(_get_paths(der, rng, target)), OK, cert_ids=1)
    if kind == "head":
        der = ocsp_request(_valid(rng, target))
        return Case(kind, get(_get_paths(der, rng, target), "HEAD"), OK, head=True)
    if kind == "random":
        body = rng.randbytes(rng.choice([1, 2, 5, 16, 100, 600, 3000]))
        if rng.random() < 0.3:
            body = b"\x30" + body  # looks like a SEQUENCE
        return Case(kind, post("/", body), ANY_OCSP)
    if kind == "mutated":
        nonce = _nonce_value(rng.choice([8, 16, 32]), rng) if rng.random() < 0.4 else None
        der = _mutate(ocsp_request(_valid(rng, target, rng.randint(1, 3)), nonce), rng)
        if len(der) > limit:
            return Case(kind, post("/", der), None, frozenset({413}))
        return Case(kind, post("/", der), ANY_OCSP)
    if kind == "mutated-get":
        der = _mutate(ocsp_request(_valid(rng, target)), rng)
        return Case(kind, get(_get_paths(der, rng, target)), ANY_OCSP)
    if kind == "cert-ids":
        n = rng.choice([0, 1, 2, target.max_cert_ids, target.max_cert_ids + 1, 500, 3000])
        der = ocsp_request(_valid(rng, target, n))
        if len(der) > limit:
            return Case(kind, post("/", der), None, frozenset({413}))
        if 1 <= n <= target.max_cert_ids:
            return Case(kind, post("/", der), OK, cert_ids=n)
        return Case(kind, post("/", der), MALFORMED)
    if kind == "nonce":
        length = rng.choice([0, 1, 15, 16, 32, 64, 128, 129, 200, 1000])
        value = _nonce_value(length, rng)
        if rng.random() < 0.2:  # not an OCTET STRING inside the extension
            value = rng.randbytes(length)
            case_nonce = None
            expected = ANY_OCSP
        elif 1 <= length <= 128:
            case_nonce, expected = value, OK
        else:
            case_nonce, expected = None, MALFORMED
        der = ocsp_request(_valid(rng, target), value)
        return Case(kind, post("/", der), expected, cert_ids=1, nonce=case_nonce)
    if kind == "content-type":
        der = ocsp_request(_valid(rng, target))
        content_type = rng.choice(
            [None, "text/plain", "application/json", "multipart/form-data; boundary=x", "", "x"]
        )
        return Case(kind, post("/", der, content_type), OK, cert_ids=1)
    if kind == "huge":
        size = rng.choice([limit + 1, limit * 2, limit * 10])
        if rng.random() < 0.5:
            return Case(kind, post("/", rng.randbytes(size)), None, frozenset({413}))
        chunk = rng.randbytes(size)
        request = (
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(chunk):x}\r\n".encode()
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        return Case(kind, request, None, frozenset({413}))
    if kind == "empty":
        if rng.random() < 0.5:
            return Case(kind, post(rng.choice(["/", f"/{target.name}/"]), b""), MALFORMED)
        return Case(kind, get(rng.choice(["/", "//", f"/{target.name}/"])), MALFORMED)
    if kind == "bad-base64":
        alphabet = "ABCabc0123+/=%-_.~!$&'()*,;:@"
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200)))
        # every path reaches the OCSP handler, one with %0A (a decoded newline) too
        return Case(kind, get("/" + text), ANY_OCSP)
    if kind == "foreign-ca":
        cid = raw_cert_id(
            HASH_OIDS["sha256"], rng.randbytes(32), rng.randbytes(32), _serial(rng, target)
        )
        if rng.random() < 0.5:
            return Case(kind, post("/", ocsp_request([cid])), frozenset({S.UNAUTHORIZED}))
        return Case(
            kind,
            get(_get_paths(ocsp_request([cid]), rng, target)),
            frozenset({S.UNAUTHORIZED}),
        )
    if kind == "long-line":
        size = rng.choice([target.max_line + 10, 20_000, 70_000])
        return Case(kind, get("/" + "A" * size), None, frozenset({400, 414}))
    if kind == "method":
        method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
        return Case(kind, get("/", method), None, frozenset({400, 405}))
    # bad-http: broken request lines, headers and framing
    der = ocsp_request(_valid(rng, target))
    broken = rng.choice(
        [
            b"GARBAGE\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
            b"GET /\x00\x01 HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(64) + b"\r\n\r\n",
            rng.randbytes(rng.randint(1, 300)).replace(b"\r\n\r\n", b"") + b"\r\n\r\n",
            post("/", der)[: rng.randrange(10, 40)] + b"\r\n\r\n",
        ]
    )
    return Case(kind, broken, ANY_OCSP, BAD_HTTP | {200})


def cases(seed: int, target: Target) -> Iterator[tuple[int, Case]]:
    rng = random.Random(seed)
    number = 0
    while True:
        yield number, make_case(rng, target)
        number += 1


# --- checking answers ------------------------------------------------------


def _headers(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def check(case: Case, target: Target, status: int, headers: dict[str, str], body: bytes) -> None:
    """AssertionError with the reason when the answer is wrong."""
    assert status < 500, f"HTTP {status}"
    if case.ocsp_status is None or status != 200:
        assert status in case.http, f"HTTP {status}, expected {sorted(case.http)}"
        return
    assert 200 in case.http, f"HTTP 200, expected {sorted(case.http)}"
    assert headers.get("content-type") == OCSP_TYPE, headers.get("content-type")
    if case.head:
        assert not body
        return
    response = ocsp.load_der_ocsp_response(body)
    got = response.response_status
    allowed = case.ocsp_status
    if target.edge and S.SUCCESSFUL in allowed:
        allowed = allowed | {S.TRY_LATER}
    assert got in allowed, f"{got.name}, expected {[s.name for s in allowed]}"
    if got is not S.SUCCESSFUL:
        assert body == asn1_ocsp.OCSPResponse({"response_status": got.value}).dump()
        assert "no-cache" in headers.get("cache-control", ""), headers
        assert "etag" not in headers and "expires" not in headers, headers
        return
    # asn1crypto, not cryptography: it also reads CertIDs with unknown hash algorithms
    basic = asn1_ocsp.OCSPResponse.load(body)["response_bytes"]["response"].parsed
    tbs = basic["tbs_response_data"]
    verify(target.signer, basic["signature"].native, tbs.dump(), response)
    singles = list(tbs["responses"])
    if case.cert_ids is not None:
        assert len(singles) == case.cert_ids, f"{len(singles)} SingleResponses"
    for single in singles:
        cid = single["cert_id"]
        algorithm = HASH_NAMES.get(cid["hash_algorithm"]["algorithm"].dotted, "?")
        serial = cid["serial_number"].native
        want = target.expected(
            cid["issuer_name_hash"].native, cid["issuer_key_hash"].native, algorithm, serial
        )
        got_status = ocsp.OCSPCertStatus[single["cert_status"].name.upper()]
        assert got_status is want, f"serial {serial:x}: {got_status.name}, want {want.name}"
    if case.nonce is not None and not target.edge:
        echoed = response.extensions.get_extension_for_oid(OCSPExtensionOID.NONCE)
        assert echoed.value.public_bytes() == case.nonce, "nonce not echoed"


def verify(
    cert: x509.Certificate, signature: bytes, data: bytes, response: ocsp.OCSPResponse
) -> None:
    """InvalidSignature unless the responder's key signed ``data``."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    key = cert.public_key()
    algorithm = response.signature_hash_algorithm
    if isinstance(key, ec.EllipticCurvePublicKey):
        assert algorithm is not None
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        assert algorithm is not None
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    else:
        raise AssertionError(f"no verifier for {type(key).__name__}")


# --- talking HTTP ----------------------------------------------------------


class _Stale(Exception):
    """The connection was closed before any byte of an answer."""


class Connection:
    """One keep-alive HTTP/1.1 connection that reconnects when the server closes."""

    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def exchange(self, request: bytes, head: bool) -> tuple[int, dict[str, str], bytes]:
        if self.writer is not None:
            try:
                return await self._exchange(request, head)
            except _Stale:
                await self.close()  # the server closed the idle connection: retry once
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            return await self._exchange(request, head)
        except _Stale as exc:
            raise AssertionError("connection closed without an answer") from exc

    async def _exchange(self, request: bytes, head: bool) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(request)
            await self.writer.drain()
        except OSError:
            pass  # the server may answer (413, 400) and close before reading it all
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    raw = await self.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    raise _Stale from None
                except ConnectionResetError:  # closed after an answer we did not ask twice
                    raise _Stale from None
                status, headers = _headers(raw[:-4])
                body = b""
                if "content-length" in headers and not head and status != 304:
                    body = await self.reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    body = await _read_chunked(self.reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise AssertionError(f"connection closed without an answer ({exc!r})") from None
        except TimeoutError:
            await self.close()
            raise AssertionError(f"no answer within {self.timeout} s") from None
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size + 2)
        body = body[:-2]


@dataclasses.dataclass
class Report:
    seed: int
    done: int = 0
    kinds: Counter[str] = dataclasses.field(default_factory=Counter)
    answers: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.done} cases, {len(self.failures)} failures; "
            f"kinds {dict(self.kinds)}; answers {dict(self.answers)}"
        )


def _answer_name(status: int, headers: dict[str, str], body: bytes) -> str:
    if status == 200 and body and headers.get("content-type") == OCSP_TYPE:
        try:
            return ocsp.load_der_ocsp_response(body).response_status.name
        except ValueError:
            return "undecodable"
    return f"HTTP {status}"


async def run(
    url: str,
    target: Target,
    *,
    count: int,
    seed: int,
    concurrency: int = 4,
    progress: Callable[[Report], None] | None = None,
    max_failures: int = 50,
) -> Report:
    """Send ``count`` cases over ``concurrency`` connections; never raises for a failure."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    report = Report(seed)
    source = cases(seed, target)

    async def worker() -> None:
        connection = Connection(host, port)
        try:
            while report.done < count and len(report.failures) < max_failures:
                number, case = next(source)
                report.done += 1
                if progress is not None and report.done % 10_000 == 0:
                    progress(report)
                report.kinds[case.kind] += 1
                try:
                    status, headers, body = await connection.exchange(case.request, case.head)
                    report.answers[_answer_name(status, headers, body)] += 1
                    check(case, target, status, headers, body)
                except Exception as exc:
                    text = f"case {number} ({case.kind}): {exc}; request {case.request[:200]!r}"
                    report.failures.append(text)
                    await connection.close()
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return report


def _serve(config: str, url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hsm_ocsp", "serve", "--config", config],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not become ready in 30 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the responder's TOML config")
    parser.add_argument("--url", default="http://127.0.0.1:8080/")
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--serve", action="store_true", help="start the responder too")
    args = parser.parse_args(argv)
    target = Target.from_config(args.config)
    process = _serve(args.config, args.url) if args.serve else None
    started = time.monotonic()

    def progress(report: Report) -> None:
        rate = report.done / (time.monotonic() - started)
        print(f"{report.done} cases, {len(report.failures)} failures, {rate:.0f}/s", flush=True)

    try:
        report = asyncio.run(
            run(
                args.url,
                target,
                count=args.cases,
                seed=args.seed,
                concurrency=args.concurrency,
                progress=progress,
            )
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait(15)
    for failure in report.failures:
        print("FAIL", failure)
    print(report.summary())
    print(f"{time.monotonic() - started:.0f} s")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
