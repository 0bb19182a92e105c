"""Memory of a responder by process, for 1, 2 and 4 workers, with a large index, a
filled store and a realistic spread of requests.

    python benchmarks/workers_memory.py [--lines 1000000] [--workers 1 2 4]
                                        [--requests 100000] [--hashes sha1 sha256]

Issue 31's figure: with a 1,000,000-line index each added worker costs at most 50 MiB.
A SoftHSM responder (``openssl ca`` CA, benchmarks/run.py's set-up) first fills its
store (every serial, each of ``--hashes``); then for each worker count it is started
again on that store (a warm start: nothing is signed again), sent ``--requests``
single-CertID requests drawn Zipf-like over every serial (the k-th most asked about 1/k
as often as the first; SHA-1 and SHA-256 CertIDs alike), and every process's RSS and
PSS is read (PSS shares a page among the processes that map it: the store's pages and
what fork shares are counted once in the sum). One worker is the single-process mode
(it holds the index itself). Run as root from the repository root; every server is
stopped by its process group.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run

MiB = 1024 * 1024


def _field(pid: int, name: str, path: str) -> float:
    for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024 / MiB
    return 0.0


def _tree(pid: int) -> list[int]:
    kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [pid] + [p for kid in kids for p in _tree(kid)]


def _role(pid: int, supervisor: int, log: str) -> str:
    if pid == supervisor:
        return "supervisor" if re.search(r"producer \d+ ready", log) else "worker"
    if "signer_child" in Path(f"/proc/{pid}/cmdline").read_text():
        return "signer"
    return "producer" if re.search(rf"producer {pid} ready", log) else "worker"


def zipf_bodies(setup: run.Setup, count: int, hashes: list[str]) -> list[bytes]:
    """``count`` requests, serials drawn Zipf-like over the whole index."""
    import itertools
    import random

    from cryptography import x509

    from tests.support.requests import build_request

    issuer = x509.load_pem_x509_certificate(setup.ca_cert.read_bytes())
    serials = [int(line.split("\t")[3], 16) for line in setup.index.read_text().splitlines()]
    rng = random.Random(31)
    rng.shuffle(serials)
    weights = list(itertools.accumulate(1 / (k + 1) for k in range(len(serials))))
    drawn = rng.choices(serials, cum_weights=weights, k=count)
    return [build_request([(issuer, s)], algorithm=hashes[i % len(hashes)])
            for i, s in enumerate(drawn)]  # fmt: skip


def config_for(setup: run.Setup, tmp: Path, workers: int, port: int, hashes: list[str]) -> Path:
    config = tmp / f"workers-{workers}.toml"
    state = f'workers = {workers}\nstate_dir = "{tmp / "state"}"'
    text = run.config_text(setup, port, server=state)
    config.write_text(text + "cert_id_hashes = [" + ", ".join(f'"{h}"' for h in hashes) + "]\n")
    return config


def load(port: int, bodies: list[bytes]) -> None:
    import concurrent.futures

    def part(chunk: list[bytes]) -> None:
        for body in chunk:
            run.post(port, body)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(part, [bodies[i::8] for i in range(8)]))


def measure(
    setup: run.Setup, tmp: Path, workers: int, bodies: list[bytes], hashes: list[str]
) -> dict[str, list[tuple[float, float]]]:
    port = run.free_port()
    config = config_for(setup, tmp, workers, port, hashes)
    argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
    started = time.monotonic()
    server = run.start("hsm-ocsp", argv, tmp / f"workers-{workers}.log", port, "/readyz")
    run.post(port, bodies[0])
    print(f"{workers} worker(s): a warm start on the filled store answered "
          f"{time.monotonic() - started:.1f} s after start", flush=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (
            workers > 1 and len(re.findall(r"worker \d+ ready", server.log.read_text())) < workers
        ):
            if time.monotonic() > deadline:
                raise SystemExit(server.log.read_text()[-2000:])
            time.sleep(0.2)
        load(port, bodies)
        time.sleep(1.0)
        log = server.log.read_text()
        roles: dict[str, list[tuple[float, float]]] = {}
        for pid in _tree(server.process.pid):
            rss = _field(pid, "VmRSS", "status")
            pss = _field(pid, "Pss", "smaps_rollup")
            roles.setdefault(_role(pid, server.process.pid, log), []).append((rss, pss))
        return roles
    finally:
        server.stop()


def fill(setup: run.Setup, tmp: Path, lines: int, hashes: list[str]) -> float:
    """Start once to fill the store; seconds it took."""
    port = run.free_port()
    config = config_for(setup, tmp, 2, port, hashes)
    argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
    started = time.monotonic()
    server = run.start("hsm-ocsp", argv, tmp / "fill.log", port, "/readyz")
    try:
        run.wait_for_fill(port, len(hashes) * lines, timeout=7200)
        time.sleep(31)  # the index version the store is true to is kept (a warm start)
    finally:
        server.stop()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--hashes", nargs="+", default=["sha1", "sha256"])
    args = parser.parse_args()
    run.INDEX_LINES = args.lines
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-memory-") as name:
        tmp = Path(name)
        run.make_token(tmp)
        setup = run.make_ca(tmp, "ec-p256")
        seconds = fill(setup, tmp, args.lines, args.hashes)
        bodies = zipf_bodies(setup, args.requests, args.hashes)
        print(f"index: {args.lines} lines, store filled ({len(args.hashes) * args.lines} "
              f"answers, {seconds:.0f} s); {args.requests} Zipf-like requests a run; "
              "MiB, RSS (PSS)")  # fmt: skip
        print("workers | supervisor | producer | each worker | signer | total PSS")
        totals = {}
        for workers in args.workers:
            roles = measure(setup, tmp, workers, bodies, args.hashes)
            totals[workers] = sum(pss for items in roles.values() for _, pss in items)

            def show(role: str, roles: dict[str, list[tuple[float, float]]] = roles) -> str:
                items = roles.get(role, [])
                if not items:
                    return "-"
                rss = sum(r for r, _ in items) / len(items)
                pss = sum(p for _, p in items) / len(items)
                return f"{rss:.0f} ({pss:.0f})"

            print(f"{workers} | {show('supervisor')} | {show('producer')} | {show('worker')} | "
                  f"{show('signer')} | {totals[workers]:.0f}")  # fmt: skip
        counts = sorted(c for c in totals if c > 1)
        if len(counts) >= 2:
            low, high = counts[0], counts[-1]
            added = (totals[high] - totals[low]) / (high - low)
            verdict = "meets" if added <= 50 else "MISSES"
            print(f"each worker added from {low} to {high}: {added:.1f} MiB PSS "
                  f"({verdict} the 50 MiB target)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
