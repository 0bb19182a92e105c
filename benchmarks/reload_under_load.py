"""Reload a 1,000,000-line index under load: does any request fail? (issue 5, point 5)

    python benchmarks/reload_under_load.py                 # 1,000,000 lines, 6 reloads
    python benchmarks/reload_under_load.py --lines 200000 --reloads 3

Makes a SoftHSM token and a CA (``openssl ca``) with a few real certificates,
appends generated lines in OpenSSL's format up to ``--lines``, and starts
``hsm-ocsp serve`` with 2 workers on 127.0.0.1. Then 16 keep-alive clients ask
without pause about a good, a revoked and the "victim" certificates while, every
few seconds, the index is replaced (a new file renamed over the old, as rsync
does) with one more victim revoked. Every answer is checked:

- HTTP 200 and ``successful`` (anything else is a failed request);
- good stays good and revoked stays revoked;
- a victim is good until its revocation is written and revoked from
  ``--lag`` seconds after (both workers reload on their own, so in between
  either answer is right).

It prints the requests, failures and wrong answers, how long each revocation
took to be answered by both workers, latency percentiles, and the largest
resident memory of a worker (the signer processes hold no index).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography.x509 import ocsp as x509_ocsp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ca import build_ca, write_config
from tests.support.pki import generated_index_lines
from tests.support.requests import build_request
from tests.support.server import free_port, start_server
from tests.support.softhsm import (
    SoftHSM,
    use_softhsm_token,
)

PIN = "61730428"
SO_PIN = "20893174"
LABEL = "reload-bench"
CLIENTS = 16
S = x509_ocsp.OCSPCertStatus


@dataclasses.dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    wrong: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    last_good: dict[int, float] = dataclasses.field(default_factory=dict)  # victim -> time
    slowest: tuple[float, float] = (0.0, 0.0)  # latency, sent at (s after start)

    def bad(self, kind: str, text: str) -> None:
        if kind == "failed":
            self.failed += 1
        else:
            self.wrong += 1
        if len(self.examples) < 10:
            self.examples.append(text)


def worker_pids(server_pid: int) -> list[int]:
    path = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    return [int(x) for x in path.read_text().split()]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory; ``RssAnon``: its own, without mapped files (the store's pages)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main_async(args: argparse.Namespace, tmp: Path) -> int:
    conf = tmp / "softhsm2.conf"
    use_softhsm_token(conf, label=LABEL, pin=PIN, so_pin=SO_PIN)
    setup = build_ca(tmp / "ca", SoftHSM(conf=conf, label=LABEL, pin=PIN))
    ca = setup.ca
    victims = [ca.serial_of(ca.issue(f"victim-{i}")) for i in range(args.reloads)]
    real = ca.index.read_text()
    filler = "".join(
        f"{line}\n" for line in generated_index_lines(args.lines - len(real.splitlines()))
    )
    ca.index.write_text(real + filler)
    print(f"index: {len(ca.index.read_text().splitlines()):,} lines, "
          f"{ca.index.stat().st_size / 2**20:.0f} MiB")  # fmt: skip

    # Every version is written before the load starts: writing 72 MB from this
    # process during the load would stall its own clients and show as latency.
    versions = []
    text = ca.index.read_text()
    for number, victim in enumerate(victims):
        hexserial = f"{victim:X}"
        hexserial = "0" * (len(hexserial) % 2) + hexserial
        old = next(line for line in text.splitlines() if f"\t{hexserial}\t" in line)
        fields = old.split("\t")
        fields[0], fields[2] = "R", "261124000000Z,keyCompromise"
        text = text.replace(old, "\t".join(fields))
        version = ca.index.with_suffix(f".v{number}")
        version.write_text(text)
        versions.append(version)
    del text

    issuer = ca.certificate
    good, revoked = setup.serial("good"), setup.serial("revoked")
    ders = {s: build_request([(issuer, s)]) for s in [good, revoked, *victims]}

    port = free_port()
    config = write_config(tmp / "hsm-ocsp.toml", {"root": setup}, server="workers = 2", port=port,
                          producer=args.producer)  # fmt: skip
    started = time.monotonic()
    server = start_server(config, port, tmp / "server.log", timeout=120)
    print(f"serving after {time.monotonic() - started:.1f} s (2 workers, each loads the index)")
    started = time.monotonic()  # times below are from here
    revoked_at: dict[int, float] = {}  # victim -> when its revocation was written
    tally = Tally()
    rss_peak: dict[int, float] = {}
    anon_peak: dict[int, float] = {}
    stop = time.monotonic() + args.reloads * args.every + args.lag + 2
    url = server.url

    async def client(session: aiohttp.ClientSession, rng: random.Random) -> None:
        while time.monotonic() < stop:
            pick = rng.random()
            if pick < 0.6:
                serial = good
            elif pick < 0.7:
                serial = revoked
            else:
                serial = rng.choice(victims)
            sent = time.monotonic()
            try:
                async with session.post(
                    url, data=ders[serial], headers={"Content-Type": "application/ocsp-request"}
                ) as answer:
                    body = await answer.read()
                    http = answer.status
            except aiohttp.ClientError as exc:
                tally.requests += 1
                tally.bad("failed", f"{type(exc).__name__}: {exc}")
                continue
            done = time.monotonic()
            tally.requests += 1
            tally.latencies.append(done - sent)
            if done - sent > tally.slowest[0]:
                tally.slowest = (done - sent, sent - started)
            if http != 200:
                tally.bad("failed", f"HTTP {http}")
                continue
            response = x509_ocsp.load_der_ocsp_response(body)
            if response.response_status != x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
                tally.bad("failed", f"{response.response_status.name}")
                continue
            status = response.certificate_status
            if serial == good:
                want = {S.GOOD}
            elif serial == revoked:
                want = {S.REVOKED}
            else:
                written = revoked_at.get(serial)
                if written is None or sent < written:
                    want = {S.GOOD} if written is None else {S.GOOD, S.REVOKED}
                elif done < written + args.lag:
                    want = {S.GOOD, S.REVOKED}
                else:
                    want = {S.REVOKED}
                if status == S.GOOD and written is not None:
                    tally.last_good[serial] = done
            if status not in want:
                tally.bad("wrong", f"serial {serial:x}: {status.name} at {done - started:.1f} s")

    async def reloader() -> None:
        for victim, version in zip(victims, versions, strict=True):
            await asyncio.sleep(args.every)
            os.replace(version, ca.index)  # as rsync does: a new file renamed over
            revoked_at[victim] = time.monotonic()

    async def sample_rss() -> None:
        while time.monotonic() < stop:
            for pid in worker_pids(server.process.pid):
                try:
                    rss_peak[pid] = max(rss_peak.get(pid, 0.0), rss_mib(pid))
                    anon_peak[pid] = max(anon_peak.get(pid, 0.0), rss_mib(pid, "RssAnon"))
                except FileNotFoundError:
                    pass
            await asyncio.sleep(0.1)

    try:
        before = {pid: rss_mib(pid) for pid in worker_pids(server.process.pid)}
        async with aiohttp.ClientSession() as session:
            rngs = [random.Random(i) for i in range(CLIENTS)]
            await asyncio.gather(*(client(session, rng) for rng in rngs), reloader(), sample_rss())
        log_text = (tmp / "server.log").read_text()
    finally:
        server.stop()

    lat = sorted(tally.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    lags = [tally.last_good.get(v, revoked_at[v]) - revoked_at[v] for v in victims]
    print(f"reloads: {len(revoked_at)} (one every {args.every:g} s), load average "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"requests: {tally.requests:,}; failed: {tally.failed}; wrong answers: {tally.wrong}")
    for example in tally.examples:
        print(f"  {example}")
    print("last 'good' for a victim after its revocation was written: "
          + ", ".join(f"{lag:.2f} s" for lag in lags))  # fmt: skip
    print(
        f"latency ms: p50 {pct(0.5):.1f}, p99 {pct(0.99):.1f}, p99.9 {pct(0.999):.1f}, "
        f"max {lat[-1] * 1000:.0f} (sent {tally.slowest[1]:.1f} s after the server was ready)"
    )
    written = ", ".join(f"{t - started:.1f}" for t in revoked_at.values())
    print(f"reloads written at (s after ready): {written}")
    peaks = [f"{before.get(p, 0):.0f} -> {rss_peak[p]:.0f}" for p in sorted(rss_peak)]
    print(f"RSS MiB of producer and workers (before load -> peak): {', '.join(peaks)}")
    anon = [f"{anon_peak[p]:.0f}" for p in sorted(anon_peak)]
    print(f"  of which their own (RssAnon, not the store's mapped pages), peak: {', '.join(anon)}")
    errors = [line for line in log_text.splitlines() if " ERROR " in line]
    print(f"ERROR lines in the server log: {len(errors)}")
    for line in errors[:5]:
        print(f"  {line}")
    return 1 if tally.failed or tally.wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--reloads", type=int, default=6)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between reloads")
    parser.add_argument("--lag", type=float, default=10.0, help="seconds a reload may take")
    parser.add_argument("--producer", default="", help='e.g. "pre_produce = false": no fill')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
        return asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
