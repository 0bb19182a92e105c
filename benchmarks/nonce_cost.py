"""What one nonce answer costs each process, in CPU, against one raw signature.

    python benchmarks/nonce_cost.py                        # both algorithms, 6 s each
    python benchmarks/nonce_cost.py --algorithms ec-p256 --seconds 10

Issue 14 asks for nonce answers at 0.8 of the token's raw signing rate with the
same number of signing processes. ``benchmarks/run.py`` measures that ratio on this
machine, where the load generator, two workers, the producer and two signer
processes share 2 cores: every microsecond of any of them is taken from the
signatures. This script says where the time goes. With the same set-up as run.py
(10,000-line index, 2 workers, ``token.sessions = 2``) it sends wrk's nonce requests
for ``--seconds`` and reads, from /proc, the CPU time each process used per answer:
the producer, the signer processes, the workers. Then it measures the raw signing
loop of run.py (2 processes) and its CPU per signature, the same way.

From these it projects what a host whose processes each have a core of their own
would do: each kind of process carries (processes x 10^6 / its microseconds per
answer) answers a second, the host the least of them, against (2 x 10^6 / the
microseconds of a raw signature). That is a model, printed as such; the measured
figures are the CPU times.

``--token-cores K`` measures instead the case the ratio is meant for, a token with
hardware of its own: the last K CPUs are the token's and run only the signer
processes (the raw loop's two and the responder's two alike), the others run
everything else (wrk, workers, producer). SoftHSM signs on the host's CPU, so
without it every microsecond of the responder is taken from the token.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # benchmarks/run.py: the same set-up and load

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def roles(server_pid: int) -> dict[int, str]:
    """The responder's processes: its producer, signer processes and workers."""
    named = {}
    for pid in run.children(server_pid):
        signers = run.children(pid)
        named[pid] = "producer" if signers else "worker"
        for signer in signers:
            named[signer] = "signer"
    return named


def raw_cpu(setup: run.Setup, seconds: float, token_cpus: set[int] | None) -> tuple[float, float]:
    """(signatures a second, CPU microseconds a signature) of run.py's raw loop."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with run.cpus_of_children(token_cpus):
        rate = run.raw_rate(setup, seconds).rate
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rate, 1e6 * used / (rate * seconds)  # the loop's set-up is a small part


def measure(algorithm: str, seconds: float, tmp: Path, token_cpus: set[int] | None) -> None:
    setup = run.make_ca(tmp, algorithm)
    host = None if token_cpus is None else os.sched_getaffinity(0) - token_cpus
    with run.cpus_of_children(host):
        server = run.start_hsm_ocsp(setup, tmp)
    named: dict[int, str] = {}
    try:
        named = roles(server.process.pid)
        for pid, role in named.items():
            if token_cpus is not None and role == "signer":
                run.pin(pid, token_cpus)
        before = {pid: cpu_seconds(pid) for pid in named}
        with run.cpus_of_children(host):
            out = run.wrk(server.port, setup.nonce_post, "POST", False, seconds, count=True)
        used = {pid: cpu_seconds(pid) - before[pid] for pid in named}
    finally:
        server.stop()
        run.gone(list(named))
    answers = out["requests"] - out["unsuccessful"]
    rate = answers / (out["duration_us"] / 1e6)
    raw_rate, raw_us = raw_cpu(setup, seconds, token_cpus)
    print(f"{algorithm}: {rate:,.0f} nonce answers a second here, {raw_rate:,.0f} raw "
          f"signatures a second (2 processes): {rate / raw_rate:.2f}")  # fmt: skip
    print(f"  one raw signature: {raw_us:.0f} us of CPU")
    capacity = []
    for role in ("producer", "signer", "worker"):
        pids = [pid for pid, r in named.items() if r == role]
        per_answer = 1e6 * sum(used[pid] for pid in pids) / answers
        carries = len(pids) * 1e6 / per_answer
        capacity.append((carries, role))
        print(f"  {role} ({len(pids)}): {per_answer:.0f} us of CPU an answer, "
              f"{per_answer / raw_us:.1f} raw signatures' worth; with a core each: "
              f"{carries:,.0f} answers a second")  # fmt: skip
    least, role = min(capacity)
    print(f"  model, a core for each process: {least:,.0f} answers a second ({role}-bound), "
          f"{least / (2e6 / raw_us):.2f} of the raw rate")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default="rsa-2048,ec-p256")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--token-cores", type=int, default=0,
        help="give the signer processes the last K CPUs to themselves (default: share all)",
    )  # fmt: skip
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if not 0 <= args.token_cores < len(cpus):
        parser.error(f"--token-cores must leave the host a CPU: this machine has {len(cpus)}")
    token_cpus = set(cpus[len(cpus) - args.token_cores :]) if args.token_cores else None
    run.reexec_in_namespace()
    if token_cpus is not None:
        print(f"token CPUs {sorted(token_cpus)}, host CPUs {sorted(set(cpus) - token_cpus)}")
    os.environ["HSM_OCSP_EVENT_LOOP"] = "uvloop"
    with tempfile.TemporaryDirectory(prefix="nonce-cost-") as tmp:
        run.make_token(Path(tmp))
        for algorithm in args.algorithms.split(","):
            measure(algorithm, args.seconds, Path(tmp), token_cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
