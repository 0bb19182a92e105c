"""Pre-production against a network HSM's latency: the fill rate with 5 ms a signature
and ``token.sessions`` 1, 2, 4 and 8, against the bound ``sessions / 5 ms``.

    python benchmarks/token_sessions.py [--latency-ms 5] [--lines 2000] [--sessions 1,2,4,8]

The token is SoftHSM behind tests/support/behaving_token.c with HSM_SHIM_LATENCY_MS (every
C_Sign sleeps that long, as a call to a network HSM waits on the network and the HSM).
For each session count a fresh ``serve`` (two workers, an empty state_dir) fills the
store for an index of ``--lines`` lines (two answers a line); the rate is the answers of
the fill over the seconds from the first to the last, read from hsm_ocsp_store_records.
Issue 27 asks for at least 1,000 a second with 8 sessions (the bound: 1,600).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run
from tests.support import behaving_token


def records(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("hsm_ocsp_store_records "):
                return float(line.split()[1])
    return 0.0


def fill_rate(
    setup: run.Setup, tmp: Path, module: Path, sessions: int, answers: int, audit: bool = False
) -> float:
    name = f"sessions-{sessions}{'-audit' if audit else ''}"
    port = run.free_port()
    path = tmp / f"{name}.toml"
    token = f'module = "{module}"\nsessions = {sessions}\nsign_timeout = "30s"'
    text = run.config_text(setup, port, server=f'workers = 2\nstate_dir = "{tmp / name}"',
                           token=token)  # fmt: skip
    if audit:  # the trail of every signature, as issue 29 asks its cost
        text += f'\n[audit]\npath = "{tmp / name / "audit.jsonl"}"\nrequired = true\n'
    path.write_text(text)
    argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(path)]
    server = run.start(name, argv, tmp / f"{name}.log", port, "/healthz")
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = records(port)
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done)
            if done >= answers and first is not None:
                return (done - first[1]) / max(now - first[0], 1e-3)
            time.sleep(0.05)
        raise SystemExit(f"{name}: the fill did not end in 600 s")
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=int, default=5, help="0: SoftHSM as fast as it is")
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--sessions", default="1,2,4,8")
    parser.add_argument("--audit", action="store_true",
                        help="each case also with the audit trail on, side by side")  # fmt: skip
    args = parser.parse_args()
    run.INDEX_LINES = args.lines
    os.environ.update(behaving_token.environment(latency_ms=args.latency_ms))
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        run.make_token(tmp)
        setup = run.make_ca(tmp, "ec-p256")
        module = behaving_token.build(tmp)
        print(f"{args.latency_ms} ms a signature, {args.lines} index lines "
              f"({2 * args.lines} answers to fill)")  # fmt: skip
        print("| token.sessions | audit trail | answers a second | bound (sessions / latency) |")
        print("|---:|---|---:|---:|")
        for sessions in (int(s) for s in args.sessions.split(",")):
            for audit in (False, True) if args.audit else (False,):
                rate = fill_rate(setup, tmp, module, sessions, 2 * args.lines, audit)
                bound = f"{sessions * 1000 / args.latency_ms:,.0f}" if args.latency_ms else "-"
                on = "on" if audit else "off"
                print(f"| {sessions} | {on} | {rate:,.0f} | {bound} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
