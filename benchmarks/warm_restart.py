"""How long a restart takes with a full answer store: the first answer after start.

    python benchmarks/warm_restart.py [--lines 1000000] [--hashes sha256]

Issue 31, item 4: a warm restart answers within 3 s whatever the index size. A SoftHSM
responder (two workers, two sessions, pre-production at full speed) fills its store
from an index of ``--lines`` lines (``--hashes``: the CertID hashes produced, one by
default to halve the fill), then is stopped; one certificate is revoked while it is
down; then it is started three times, side by side, and the seconds from start to the
first answer (which must say revoked for that certificate) are printed:

- warm: the index version the store is true to is kept (state_dir/taken), only the
  changed lines are withdrawn;
- read whole: that copy removed (as before issue 31), the store is read whole;
- cold: an empty state_dir (nothing to read; the fill starts over behind the answers).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run


def first_answer(config: Path, port: int, body: bytes, log: Path) -> float:
    """Seconds from start to a successful answer for ``body`` that says revoked."""
    import subprocess

    from cryptography.x509 import ocsp

    started = time.perf_counter()
    argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, process_group=0)
    server = run.Server("hsm-ocsp", port, process, log)
    try:
        while time.perf_counter() - started < 300:
            try:
                answer = ocsp.load_der_ocsp_response(run.post(port, body))
            except (OSError, ValueError):
                time.sleep(0.02)
                continue
            if answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED, "good!"
                return time.perf_counter() - started
            time.sleep(0.02)
        raise SystemExit(f"no answer in 300 s: {log.read_text()[-2000:]}")
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--hashes", nargs="+", default=["sha256"])
    args = parser.parse_args()
    run.INDEX_LINES = args.lines
    from tests.support.pki import OpenSSLCA

    with tempfile.TemporaryDirectory(prefix="warm-restart-") as name:
        tmp = Path(name)
        run.make_token(tmp)
        setup = run.make_ca(tmp, "ec-p256")
        port = run.free_port()
        state = tmp / "state"
        hashes = ", ".join(f'"{h}"' for h in args.hashes)
        config = tmp / "serve.toml"
        text = run.config_text(setup, port, server=f'workers = 2\nstate_dir = "{state}"')
        config.write_text(text + f"cert_id_hashes = [{hashes}]\n")
        argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
        started = time.perf_counter()
        server = run.start("hsm-ocsp", argv, tmp / "fill.log", port, "/readyz")
        try:
            run.wait_for_fill(port, len(args.hashes) * args.lines, timeout=3600)
            time.sleep(31)  # the index version kept (at most every 30 s)
        finally:
            server.stop()
        print(f"{args.lines:,} lines, {len(args.hashes) * args.lines:,} answers stored in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        ca = OpenSSLCA.__new__(OpenSSLCA)
        ca.dir, ca.cnf, ca.index = setup.directory, setup.directory / "openssl.cnf", setup.index
        ca.revoke(setup.directory / "good.pem", "-crl_reason", "keyCompromise")
        body = setup.cached_der  # the "good" certificate's request, revoked while down
        results = {}
        for case in ("warm", "read whole", "cold"):  # in place: a copy is of its store
            if case == "read whole":
                for copy in (state / "taken").glob("*.index"):
                    copy.unlink()
            if case == "cold":
                shutil.rmtree(state)
            results[case] = first_answer(config, port, body, tmp / f"{case}.log")
            print(f"{case}: first answer (revoked) {results[case]:.1f} s after start")
        print(f"warm / read whole: {results['warm'] / results['read whole']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
