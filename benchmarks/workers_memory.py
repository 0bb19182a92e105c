"""Memory of a responder by process, for 1, 2 and 4 workers, with a large index.

    python benchmarks/workers_memory.py [--lines 1000000] [--workers 1 2 4]

Issue 14's figure: with a 1,000,000-line index each added worker adds at most 50 MiB
of resident memory, because only the producer holds the index (and the token). For
each worker count it starts ``hsm-ocsp serve`` on a SoftHSM token and an
``openssl ca`` CA whose index has ``--lines`` lines (benchmarks/run.py's set-up),
waits for /readyz, sends each worker requests, and reads every process's RSS and PSS
(PSS shares a page among the processes that map it: the LMDB store's pages and what
fork shares are counted once in the sum). Pre-production is off here: the figure is
the processes' own memory, not the store's, which benchmarks/run.py fills.
One worker is the single-process mode (it holds the index itself). Run as root from
the repository root; every server is stopped by its process group.
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


def measure(setup: run.Setup, tmp: Path, workers: int) -> dict[str, list[tuple[float, float]]]:
    port = run.free_port()
    config = tmp / f"workers-{workers}.toml"
    state = f'workers = {workers}\nstate_dir = "{tmp / f"state-{workers}"}"'
    config.write_text(run.config_text(setup, port, server=state, producer="pre_produce = false"))
    argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
    server = run.start("hsm-ocsp", argv, tmp / f"workers-{workers}.log", port, "/readyz")
    try:
        deadline = time.monotonic() + 120
        while len(re.findall(r"worker \d+ ready", server.log.read_text())) < workers:
            if time.monotonic() > deadline:
                raise SystemExit(server.log.read_text()[-2000:])
            time.sleep(0.2)
        for _ in range(20 * workers):  # a new connection each: every worker answers
            run.post(port, setup.cached_der)
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    run.INDEX_LINES = args.lines
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-memory-") as name:
        tmp = Path(name)
        run.make_token(tmp)
        setup = run.make_ca(tmp, "ec-p256")
        print(f"index: {args.lines} lines; MiB, RSS (PSS)")
        print("workers | supervisor | producer | each worker | signer | total PSS")
        totals = {}
        for workers in args.workers:
            roles = measure(setup, tmp, workers)
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
