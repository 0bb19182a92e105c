"""Does signing keep its speed while the event loop is busy? (issue 5, point 4)

    python benchmarks/signing_under_load.py                  # RSA-2048 and P-256, 3 s a case
    python benchmarks/signing_under_load.py --seconds 5 --algorithms rsa-2048

Makes a SoftHSM token in a temporary directory and one key per algorithm, then
measures, each case in a fresh process, one after the other and then once more
in the reverse order (the machine is shared; the two halves are averaged):

- raw: a python-pkcs11 loop on one thread, preparing and finishing each
  signature as the responder does (the token's own rate, one process);
- thread idle / thread busy: the in-process design, ``Token`` signing on its
  one thread for 16 concurrent callers on an event loop that is idle, or busy
  all the time with short CPU-bound steps (about what one HTTP request costs);
- process idle / process busy: the same with ``TokenProcess``, the signer
  process that ``hsm-ocsp serve`` uses in each worker.

It prints signatures a second, the ratio to raw, how many busy steps the loop
made (a signer that stalls the loop would show there), and how many calls got
no answer within the 5 s sign timeout (the in-process thread can starve that
long next to a busy loop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "sign-under-load"
PIN = "52018833"
SO_PIN = "77120094"
CALLERS = 16
CASES = ("raw", "thread-idle", "thread-busy", "process-idle", "process-busy")


def busy_step() -> None:
    sum(range(4_000))  # some 0.1-0.2 ms of pure Python, like one request


class _ThreadSigner:
    """The in-process design: a Token's own thread signs while the event loop waits."""

    def __init__(self, token: Any) -> None:
        self.token = token

    async def open(self) -> None:
        await asyncio.to_thread(self.token.open_blocking)

    async def sign(self, name: str, data: bytes) -> bytes:
        signature: bytes = await asyncio.to_thread(self.token.sign_blocking, name, data)
        return signature

    def close(self) -> None:
        self.token.close()


async def measure(case: str, uri: str, seconds: float) -> tuple[float, int, int]:
    from pkcs11 import ObjectClass

    from hsm_ocsp.core.errors import TokenError
    from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
    from hsm_ocsp.core.signing import scheme_for_public_key
    from hsm_ocsp.pkcs11.key_lookup import KeySpec
    from hsm_ocsp.pkcs11.keys import open_session, public_key_from_token
    from hsm_ocsp.pkcs11.signer_process import TokenProcess
    from hsm_ocsp.pkcs11.token import Token

    parsed = parse_pkcs11_uri(uri)
    with open_session(MODULE, PIN, parsed) as session:
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=parsed.object)
        scheme = scheme_for_public_key(public_key_from_token(public))
    spec = KeySpec("k", parsed, scheme)
    if case == "raw":
        token = Token(MODULE, PIN, [spec])
        token.open_here()
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            token.sign_here("k", b"x" * 300)
            count += 1
        return count / seconds, 0, 0
    signer: _ThreadSigner | TokenProcess
    if case.startswith("thread"):
        signer = _ThreadSigner(Token(MODULE, PIN, [spec]))
    else:
        signer = TokenProcess(MODULE, PIN, [spec])
    await signer.open()
    await signer.sign("k", b"warm-up")
    busy = case.endswith("busy")
    steps = 0
    running = True

    async def spin() -> None:
        nonlocal steps
        while running:
            busy_step()
            steps += 1
            await asyncio.sleep(0)

    done = failed = 0
    stop = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done, failed
        while time.monotonic() < stop:
            try:
                await signer.sign("k", b"x" * 300)
                done += 1
            except TokenError:  # e.g. no answer within sign_timeout (5 s)
                failed += 1

    spinner = asyncio.create_task(spin()) if busy else None
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    running = False
    if spinner is not None:
        await spinner
    if isinstance(signer, TokenProcess):
        await signer.aclose()
    else:
        signer.close()
    return done / seconds, steps, failed


def run_case(case: str, uri: str, seconds: float) -> tuple[float, int, int]:
    done = subprocess.run(
        [sys.executable, __file__, "--case", case, "--uri", uri, "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{done.stderr}")
    out = done.stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--algorithms", default="rsa-2048,ec-p256")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        rate, steps, failed = asyncio.run(measure(args.case, args.uri, args.seconds))
        print(rate, steps, failed)
        return 0

    from tests.support.softhsm import use_softhsm_token

    with tempfile.TemporaryDirectory(prefix="sign-under-load-") as tmp:
        conf = Path(tmp) / "softhsm2.conf"
        use_softhsm_token(conf, label=LABEL, pin=PIN, so_pin=SO_PIN)
        print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
        print(
            f"{'key':<9} {'case':<13} {'sig/s':>8} {'/ raw':>6} {'loop steps/s':>13}"
            f" {'timed out':>9}"
        )
        for algorithm in args.algorithms.split(","):
            uri = f"pkcs11:token={LABEL};object={algorithm}"
            subprocess.run(
                [sys.executable, "-m", "hsm_ocsp", "keygen", "--module", MODULE,
                 "--algorithm", algorithm, "--key", uri],
                check=True, capture_output=True, cwd=ROOT,
            )  # fmt: skip
            timeouts = dict.fromkeys(CASES, 0)
            rates: dict[str, list[float]] = {c: [] for c in CASES}
            steps: dict[str, list[int]] = {c: [] for c in CASES}
            for order in (CASES, tuple(reversed(CASES))):
                for case in order:
                    rate, step, failed = run_case(case, uri, args.seconds)
                    rates[case].append(rate)
                    timeouts[case] += failed
                    steps[case].append(step)
            raw = sum(rates["raw"]) / len(rates["raw"])
            for case in CASES:
                rate = sum(rates[case]) / len(rates[case])
                per_s = sum(steps[case]) / len(steps[case]) / args.seconds
                shown = f"{per_s:>13,.0f}" if case.endswith("busy") else f"{'':>13}"
                print(
                    f"{algorithm:<9} {case:<13} {rate:>8,.0f} {rate / raw:>6.2f} {shown}"
                    f" {timeouts[case]:>9}"
                )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
