"""A small token under steady load for minutes: does pre-production keep every answer
current, and are revocations answered at once?

    python benchmarks/small_token.py                 # the 15-minute run of issue 31
    python benchmarks/small_token.py --short         # the 3-minute variant, day to day

Issue 31, item 7. SoftHSM behind tests/support/behaving_token.c slowed to 100 ms a
signature (10 a second, one session: a smart-card HSM), ``--serials`` serials in the
index, ``validity`` ``--validity``, two workers, ``--rate`` requests a second of
single CertIDs (SHA-1 or SHA-256, serials drawn Zipf-like: a few asked often, most
rarely), and a revocation (an index line rewritten, renamed in) every two minutes.
The 15-minute run: 1,000 serials, validity 10m, 50 requests a second. The short one:
200 serials, validity 2m, 50 a second, 3 minutes.

It reports, after the warm-up (the first fill: 2 answers a serial at 10 a second):
- answers verified (the signature checked against the responder certificate), of all;
- answers served past their nextUpdate (must be 0) and tryLater answers (must be 0);
- signatures a second by reason, from ``hsm_ocsp_signatures_total`` (refresh near
  2 x serials per half-validity, live near 0);
- for each revocation, the seconds until both CertIDs of its serial are answered
  revoked (must be under 2);
- the p50 and p99 of the answers' latency.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from benchmarks import run
from tests.support import behaving_token
from tests.support.requests import build_request

REVOKE_EVERY = 120.0  # seconds


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = self.verified = self.late = self.try_later = self.other = 0
        self.latencies: list[float] = []

    def add(self, answer: ocsp.OCSPResponse | None, seconds: float, key: object) -> None:
        with self.lock:
            self.total += 1
            self.latencies.append(seconds)
            if answer is None:
                self.other += 1
                return
            if answer.response_status is ocsp.OCSPResponseStatus.TRY_LATER:
                self.try_later += 1
                return
            if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                self.other += 1
                return
            now = dt.datetime.now(dt.UTC)
            if answer.next_update_utc is None or answer.next_update_utc <= now:
                self.late += 1
            try:
                key.verify(answer.signature, answer.tbs_response_bytes,  # type: ignore[attr-defined]
                           ec.ECDSA(answer.signature_hash_algorithm))  # fmt: skip
                self.verified += 1
            except Exception:  # an answer that does not verify is counted as not verified
                pass


def zipf_serials(serials: list[int], count: int, rng: random.Random) -> list[int]:
    """``count`` draws, the k-th most asked serial about 1/k as often as the first."""
    weights = [1 / (k + 1) for k in range(len(serials))]
    return rng.choices(serials, weights=weights, k=count)


def ask(port: int, body: bytes) -> ocsp.OCSPResponse | None:
    try:
        return ocsp.load_der_ocsp_response(run.post(port, body))
    except (OSError, ValueError):
        return None


def signatures(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'hsm_ocsp_signatures_total\{reason="(\w+)"\} ([0-9.e+]+)', text)
    return {reason: float(value) for reason, value in found}


def revoke_line(index: Path, serial: int) -> None:
    """Rewrite ``serial``'s V line as revoked, renamed into place as openssl ca does."""
    lines = index.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        fields = line.split("\t")
        if fields[0] == "V" and int(fields[3], 16) == serial:
            fields[0], fields[2] = "R", time.strftime("%y%m%d%H%M%SZ", time.gmtime()) + (
                ",keyCompromise")  # fmt: skip
            lines[i] = "\t".join(fields)
    new = index.with_suffix(".new")
    new.write_text("".join(lines))
    os.replace(new, index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the 3-minute variant")
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--serials", type=int)
    parser.add_argument("--validity")
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    minutes = args.minutes or (3.0 if args.short else 15.0)
    serial_count = args.serials or (200 if args.short else 1000)
    validity = args.validity or ("2m" if args.short else "10m")
    run.INDEX_LINES = serial_count
    rng = random.Random(31)
    with tempfile.TemporaryDirectory(prefix="small-token-") as name:
        tmp = Path(name)
        run.make_token(tmp)
        setup = run.make_ca(tmp, "ec-p256")
        os.environ.update(behaving_token.environment(latency_ms=100))
        module = behaving_token.build(tmp)
        port = run.free_port()
        config = tmp / "small.toml"
        token = f'module = "{module}"\nsessions = 1\nsign_timeout = "30s"'
        server_keys = f'workers = 2\nstate_dir = "{tmp / "s"}"'
        text = run.config_text(setup, port, server=server_keys, token=token)
        config.write_text(text + f'validity = "{validity}"\n')
        issuer = x509.load_pem_x509_certificate(setup.ca_cert.read_bytes())
        key = x509.load_pem_x509_certificate(setup.responder_cert.read_bytes()).public_key()
        lines = setup.index.read_text().splitlines()
        good = [int(f.split("\t")[3], 16) for f in lines if f.startswith("V\t")]
        rng.shuffle(good)
        bodies = {(s, h): build_request([(issuer, s)], algorithm=h)
                  for s in good for h in ("sha1", "sha256")}  # fmt: skip
        argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
        server = run.start("hsm-ocsp", argv, tmp / "serve.log", port, "/readyz")
        started = time.monotonic()
        warm_up = 2 * serial_count / 10 + 10  # the first fill at 10 a second
        end = started + 60 * minutes
        tally, warm = Tally(), Tally()
        revocations: list[float] = []
        pool = concurrent.futures.ThreadPoolExecutor(32)
        try:
            plan = zipf_serials(good, int(args.rate * 60 * minutes) + 10, rng)
            stop = threading.Event()

            def revoker() -> None:  # one every two minutes, beside the load
                while not stop.wait(REVOKE_EVERY):
                    victim = good.pop()  # the least asked
                    revoke_line(setup.index, victim)
                    revoked_at = time.monotonic()
                    while time.monotonic() - revoked_at < 30:
                        answers = [ask(port, bodies[victim, h]) for h in ("sha1", "sha256")]
                        if all(a is not None and a.response_status is
                               ocsp.OCSPResponseStatus.SUCCESSFUL and a.certificate_status is
                               ocsp.OCSPCertStatus.REVOKED for a in answers):  # fmt: skip
                            break
                        time.sleep(0.02)
                    revocations.append(time.monotonic() - revoked_at)

            revoking = threading.Thread(target=revoker, daemon=True)
            revoking.start()
            before: dict[str, float] = {}
            sent = 0
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= started + warm_up and not before:
                    before = signatures(port)
                    measured_from = now
                serial = plan[sent % len(plan)]
                if serial not in good:  # revoked meanwhile: ask another
                    serial = good[sent % len(good)]
                body = bodies[serial, "sha1" if sent % 2 else "sha256"]
                into = tally if now >= started + warm_up else warm

                def one(body: bytes = body, into: Tally = into) -> None:
                    t0 = time.perf_counter()
                    answer = ask(port, body)
                    into.add(answer, time.perf_counter() - t0, key)

                pool.submit(one)
                sent += 1
                time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
            stop.set()
            pool.shutdown(wait=True)
            after = signatures(port)
            span = time.monotonic() - measured_from
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            server.stop()
    rates = {r: (after.get(r, 0) - before.get(r, 0)) / span for r in sorted(after)}
    latencies = sorted(tally.latencies) or [0.0]
    print(f"small token: {serial_count} serials, validity {validity}, 10 signatures a "
          f"second, {args.rate:.0f} requests a second for {minutes:.0f} min "
          f"(measured after a {warm_up:.0f} s warm-up)")  # fmt: skip
    print(f"answers: {tally.total}, verified {tally.verified}, past nextUpdate {tally.late}, "
          f"tryLater {tally.try_later}, other {tally.other}; during warm-up {warm.total} "
          f"answers, {warm.try_later} tryLater")  # fmt: skip
    print("signatures a second by reason: " + ", ".join(f"{r} {v:.2f}" for r, v in rates.items()))
    print(f"revocations answered revoked (both CertIDs) after: "
          f"{', '.join(f'{s:.2f} s' for s in revocations) or 'none'}")  # fmt: skip
    print(f"latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")  # fmt: skip
    ok = tally.late == 0 and tally.try_later == 0 and all(s < 2 for s in revocations)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
