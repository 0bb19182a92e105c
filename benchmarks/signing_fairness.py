"""Legitimate new serials during a flood of live-signature requests, on a slow token.

    python benchmarks/signing_fairness.py [--seconds 20] [--clients 8]

Hardening item 8. The responder key is RSA-7680 on SoftHSM: about 30-45 ms a
signature here, a slow token without any wrapper. For ``--seconds``, three
floods run at once, each from ``--clients`` connections asking without pause:
nonce requests, serials the CA never issued, and requests with four CertIDs.
Meanwhile one client asks every 0.5 s for an issued serial nobody asked for
before, which needs a signature of its own. Printed: how many of those were
signed (and how fast), next to the same stream with no flood, and what each
flood got. Every answer is checked by status only; run as root from the
repository root; everything listens on 127.0.0.1 and stops by itself.

Measured here (--seconds 15 --clients 16, 48 flooding clients, one run each):
before the queues (one line for all, nonces capped at 3/4), a new issued serial
waited behind the flood: median 1,664 ms, 8 asked in the window. With them and
4 signatures handed to the signer at once (sign_queue.WINDOW), median 225 ms (38
ms with no flood), 19 asked, all signed, and each flood held to its own line
(about 97 % of its requests tryLater). A window of 2 gave 183 ms but cost nonce
throughput on a fast token (benchmarks/run.py: 1,643 against 1,908 nonce answers a
second before the queues); 4 gave 1,838, 8 gave 1,927 but 370 ms here.
The window now widens with the token's speed (up to sign_queue.MAX_WINDOW on a fast
token) and stays at 4 on this one: --seconds 10 --clients 16 gave a median of 198 ms
(36 ms with no flood), 13 asked, all signed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography.x509 import ocsp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hsm_ocsp.core.pkcs11_uri import Pkcs11Uri
from tests.support.pki import OpenSSLCA, generated_index_lines
from tests.support.requests import build_request
from tests.support.server import RunningServer, start_server
from tests.support.softhsm import (
    MODULE,
    use_softhsm_token,
)

PIN = "24681357"
TYPE = {"Content-Type": "application/ocsp-request"}


def set_up(tmp: Path) -> tuple[OpenSSLCA, Path, list[int]]:
    import pkcs11
    from pkcs11 import KeyType

    from hsm_ocsp.pkcs11.keys import public_key_from_token

    use_softhsm_token(tmp / "softhsm" / "softhsm2.conf", label="fair", pin=PIN, so_pin="13579")
    ca = OpenSSLCA(tmp / "ca", "Fairness CA")
    token = pkcs11.lib(MODULE).get_token(token_label="fair")
    started = time.monotonic()
    with token.open(user_pin=PIN, rw=True) as session:
        public, _ = session.generate_keypair(
            KeyType.RSA, 7680, store=True, label="slow", private_template={}, public_template={}
        )
        public_key = public_key_from_token(public)
    print(f"RSA-7680 key made on the token in {time.monotonic() - started:.0f} s")
    responder = ca.sign_responder(public_key)
    lines = generated_index_lines(2000)
    with ca.index.open("a") as index:
        index.writelines(line + "\n" for line in lines)
    issued = [int(line.split("\t")[3], 16) for line in lines if line.startswith("V")]
    config = tmp / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{{port}}"\nmax_pending_signatures = 64\n\n'
        f'[token]\nmodule = "{MODULE}"\nsign_timeout = "10s"\n\n'
        f'[[ca]]\nname = "root"\ncertificate = "{ca.cert_path}"\nindex = "{ca.index}"\n'
        f'key = "{Pkcs11Uri(token="fair", object="slow")}"\n'
        f'responder_certificate = "{responder}"\n'
    )
    return ca, config, issued


async def ask(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[str, float]:
    started = time.monotonic()
    async with session.post(url, data=body, headers=TYPE) as response:
        data = await response.read()
    status = ocsp.load_der_ocsp_response(data).response_status
    return status.name, time.monotonic() - started


async def legit(url: str, ca: OpenSSLCA, serials: list[int], seconds: float) -> list[tuple]:
    results = []
    async with aiohttp.ClientSession() as session:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            body = build_request([(ca.certificate, serials.pop())])
            results.append(await ask(session, url, body))
            await asyncio.sleep(0.5)
    return results


async def flood(url: str, ca: OpenSSLCA, kind: str, clients: int, seconds: float) -> dict:
    counts: dict[str, int] = {}

    def body() -> bytes:
        cert = ca.certificate
        if kind == "nonce":
            return build_request([(cert, 1)], nonce=secrets.token_bytes(16))
        if kind == "unknown":
            return build_request([(cert, secrets.randbits(64))])
        return build_request([(cert, secrets.randbits(64)) for _ in range(4)])

    async def client(session: aiohttp.ClientSession, stop: float) -> None:
        while time.monotonic() < stop:
            status, _ = await ask(session, url, body())
            counts[status] = counts.get(status, 0) + 1

    async with aiohttp.ClientSession() as session:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(client(session, stop) for _ in range(clients)))
    return counts


def summary(name: str, results: list[tuple]) -> str:
    signed = [seconds for status, seconds in results if status == "SUCCESSFUL"]
    text = f"{name}: {len(signed)} of {len(results)} new issued serials signed"
    if signed:
        text += (
            f", median {statistics.median(signed) * 1000:.0f} ms, max {max(signed) * 1000:.0f} ms"
        )
    return text


async def run(server: RunningServer, ca: OpenSSLCA, issued: list[int], args) -> None:
    url = server.url
    quiet = await legit(url, ca, issued, 5)
    floods = asyncio.gather(
        *(
            flood(url, ca, kind, args.clients, args.seconds)
            for kind in ("nonce", "unknown", "multi")
        )
    )
    during = await legit(url, ca, issued, args.seconds - 1)
    counts = await floods
    print(summary("no flood", quiet))
    print(summary(f"during the floods ({3 * args.clients} clients)", during))
    for kind, found in zip(("nonce", "unknown", "multi"), counts, strict=True):
        total = sum(found.values())
        print(f"  flood {kind:8s} {total:6d} requests: {found}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8, help="per flood kind (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-fair-") as name:
        tmp = Path(name)
        ca, config, issued = set_up(tmp)
        from tests.support.server import free_port

        port = free_port()
        config.write_text(config.read_text().replace("{port}", str(port)))
        os.environ["HSM_OCSP_PIN"] = PIN
        server = start_server(config, port, tmp / "server.log", timeout=120)
        try:
            asyncio.run(run(server, ca, issued, args))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
