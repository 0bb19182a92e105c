"""A slow token and a paced producer: the fill goes on in the background, answers
already produced see no added latency, and a revocation is answered within 2 s.

    python benchmarks/slow_token.py [--delay-ms 100] [--rate 10] [--seconds 10]

Issue 14's "slow token" figure. The token is SoftHSM behind a PKCS#11 wrapper module
compiled here (gcc, p11-kit's pkcs11.h) that sleeps ``--delay-ms`` in every C_Sign
and C_SignFinal: about 10 signatures a second, like a smart-card HSM. The CA's index
has 10,000 lines (benchmarks/run.py's set-up) and ``producer.max_signatures_per_second``
is ``--rate``, so the fill takes about 2,000 / rate seconds a thousand lines and is far
from done while this runs. Side by side, one right after the other on the same token:
- baseline: the same server with pre-production off, the answer asked once;
- filling: pre-production on, the answer already produced (it is near the top).
Each is sent the same sequence of requests on one keep-alive connection; the script
prints p50 and p99 and their ratio (filling / baseline). Then, still filling, it
revokes another produced serial with ``openssl ca -revoke`` and prints the seconds
until every answer for it says revoked. Every server is stopped by its process group.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509
from cryptography.x509 import ocsp

from benchmarks import run
from tests.support.requests import build_request
from tests.support.slow_token import build_shim


def config(setup: run.Setup, tmp: Path, name: str, module: Path, producer: str) -> Path:
    path = tmp / f"{name}.toml"
    server = f'workers = 2\nstate_dir = "{tmp / name}"'
    token = f'module = "{module}"\nsign_timeout = "30s"'
    path.write_text(run.config_text(setup, run.free_port(), server=server, producer=producer,
                                    token=token))  # fmt: skip
    return path


def serve(path: Path, tmp: Path, name: str) -> run.Server:
    port = int(path.read_text().split("127.0.0.1:")[1].split('"')[0])
    argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(path)]
    return run.start(name, argv, tmp / f"{name}.log", port, "/readyz")


def latencies(port: int, body: bytes, seconds: float) -> list[float]:
    """Sequential POSTs on one keep-alive connection for ``seconds``; each in ms."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        connection.request("POST", "/", body, {"Content-Type": "application/ocsp-request"})
        answer = connection.getresponse().read()
        out.append((time.perf_counter() - started) * 1000)
        status = ocsp.load_der_ocsp_response(answer).response_status
        if status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise SystemExit(f"answer {status}")
        time.sleep(0.01)
    connection.close()
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def revocation_seconds(setup: run.Setup, port: int) -> float:
    """``openssl ca -revoke`` of a produced serial; seconds until it is answered revoked."""
    pem = setup.directory / "other.pem"
    serial = x509.load_pem_x509_certificate(pem.read_bytes()).serial_number
    issuer = x509.load_pem_x509_certificate(setup.ca_cert.read_bytes())
    body = build_request([(issuer, serial)], algorithm="sha256")
    good = ocsp.load_der_ocsp_response(run.post(port, body))
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    cnf = setup.directory / "openssl.cnf"
    subprocess.run(["openssl", "ca", "-config", str(cnf), "-revoke", str(pem)],
                   check=True, capture_output=True)  # fmt: skip
    revoked = time.monotonic()
    while time.monotonic() - revoked < 30:
        answer = ocsp.load_der_ocsp_response(run.post(port, body))
        if (
            answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
            and answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
        ):
            return time.monotonic() - revoked
        time.sleep(0.02)
    raise SystemExit("the revocation was not answered in 30 s")


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    run.INDEX_LINES = 10_000
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-slow-") as name:
        tmp = Path(name)
        run.make_token(tmp)
        setup = run.make_ca(tmp, "ec-p256")
        module = build_shim(tmp, args.delay_ms, run.MODULE)
        base = serve(config(setup, tmp, "baseline", module, "pre_produce = false"), tmp,
                     "baseline")  # fmt: skip
        try:
            started = time.perf_counter()
            run.post(base.port, setup.cached_der)  # signed once (slowly), then cached
            first_ms = (time.perf_counter() - started) * 1000
            baseline = latencies(base.port, setup.cached_der, args.seconds)
        finally:
            base.stop()
        producer = f"max_signatures_per_second = {args.rate}"
        filling = serve(config(setup, tmp, "filling", module, producer), tmp, "filling")
        try:
            deadline = time.monotonic() + 60  # "good" and "other" lead the index
            while metric(filling.port, 'hsm_ocsp_signatures_total{reason="fill"}') < 6:
                if time.monotonic() > deadline:
                    raise SystemExit("the fill did not start")
                time.sleep(0.2)
            during = latencies(filling.port, setup.cached_der, args.seconds)
            seconds = revocation_seconds(setup, filling.port)
            filled = metric(filling.port, 'hsm_ocsp_signatures_total{reason="fill"}')
        finally:
            filling.stop()
    print(f"token: {args.delay_ms} ms a signature; producer: {args.rate} signatures/s; "
          f"{run.INDEX_LINES} index lines, {filled:.0f} of {2 * run.INDEX_LINES} answers "
          "produced when it ended")  # fmt: skip
    print(f"the first answer (signed for it) took {first_ms:.0f} ms")
    print("| case | requests | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for label, values in (("baseline (no fill)", baseline), ("while filling", during)):
        print(f"| {label} | {len(values)} | {statistics.median(values):.2f} | {p99(values):.2f} |")
    print(f"p99 while filling / baseline: {p99(during) / p99(baseline):.2f}")
    print(f"revocation answered after {seconds:.2f} s (target: within 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
