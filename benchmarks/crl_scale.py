"""A CA served from a 1,000,000-entry CRL: take-up time, memory per entry, and how long
a changed CRL's new revocation takes to be answered.

    python benchmarks/crl_scale.py [--entries 1000000]

Issue 30's figure: the CRL is taken up, and a changed CRL's revocations are in the
store, within 10 s. The CRL is made by ``openssl ca -gencrl`` from an index of
``--entries`` revoked lines (one in three keyCompromise). Three measurements:

1. in a fresh process that first imports what a producer imports: the CRL read and
   judged (signature, entries) and made a status, seconds and resident MiB added
   (bytes per entry);
2. ``hsm-ocsp serve`` (two workers, SoftHSM, ``not_on_crl = "good"``) started on it:
   seconds to /readyz;
3. one more revocation, a new CRL renamed into place: seconds until a client's
   answer for that serial is revoked, for both CertID hashes, and until the producer
   reports the change produced into the store (``hsm_ocsp_production_lag_seconds``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run


def write_index(path: Path, entries: int) -> None:
    with path.open("w") as out:
        for i in range(entries):
            reason = ",keyCompromise" if i % 3 == 0 else ""
            out.write(f"R\t301231000000Z\t251124000000Z{reason}\t{0x100000 + 7 * i:X}\t"
                      f"unknown\t/CN=c{i}\n")  # fmt: skip


def measure_read(ca_cert: Path, crl: Path) -> None:
    """In this (fresh) process: read, judge and combine; seconds and MiB."""
    import datetime as dt

    from cryptography import x509

    import hsm_ocsp.server.app  # noqa: F401  # what a producer holds besides the CRL
    from hsm_ocsp.core.crl import combine, read_crl

    def rss() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    data = crl.read_bytes()
    before = rss()
    started = time.perf_counter()
    facts = read_crl(data, cert, dt.datetime.now(dt.UTC))
    snapshot = combine([facts], [], None).snapshot
    seconds = time.perf_counter() - started
    del data
    added = rss() - before
    print(f"read and judged: {len(snapshot.entries):,} entries in {seconds:.2f} s; "
          f"{added:.0f} MiB resident added ({added * 1024 * 1024 / len(snapshot.entries):.0f} "
          "bytes an entry)")  # fmt: skip


def _status(url: str, body: bytes) -> object:
    from tests.support.watch import status_of

    return status_of(url, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure_read(Path(args.measure[0]), Path(args.measure[1]))
        return 0
    from cryptography import x509
    from cryptography.x509 import ocsp

    from tests.support.pki import OpenSSLCA

    with tempfile.TemporaryDirectory(prefix="crl-scale-") as name:
        tmp = Path(name)
        run.make_token(tmp)
        setup = run.make_ca(tmp, "ec-p256")
        ca = OpenSSLCA.__new__(OpenSSLCA)  # the set-up's CA, driven again
        ca.dir, ca.cnf, ca.index = setup.directory, setup.directory / "openssl.cnf", setup.index
        write_index(setup.index, args.entries)
        crl = tmp / "ca.crl"
        started = time.perf_counter()
        ca.gencrl(crl, "-crldays", "7")
        print(f"openssl ca -gencrl: {args.entries:,} entries, {crl.stat().st_size / 2**20:.1f} "
              f"MiB, made in {time.perf_counter() - started:.1f} s")  # fmt: skip
        subprocess.run([sys.executable, __file__, "--measure", str(setup.ca_cert), str(crl)],
                       check=True, cwd=ROOT)  # fmt: skip
        port = run.free_port()
        config = tmp / "crl.toml"
        text = run.config_text(
            setup, port, server=f'workers = 2\nstate_dir = "{tmp / "state"}"',
            producer="max_signatures_per_second = 200",
        )  # fmt: skip
        text = text.replace(f'index = "{setup.index}"',
                            f'crl = "{crl}"\nnot_on_crl = "good"')  # fmt: skip
        config.write_text(text)
        argv = [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)]
        started = time.perf_counter()
        server = run.start("hsm-ocsp", argv, tmp / "serve.log", port, "/readyz")
        try:
            print(f"serve: ready {time.perf_counter() - started:.1f} s after start")
            # One more revocation, a new CRL renamed into place.
            cert = x509.load_pem_x509_certificate(setup.ca_cert.read_bytes())
            serial = 0xFEEDFACE
            with setup.index.open("a") as out:
                out.write(f"R\t301231000000Z\t261201000000Z,keyCompromise\t{serial:X}\tunknown"
                          "\t/CN=new\n")  # fmt: skip
            url = f"http://127.0.0.1:{port}/"
            bodies = [_request(cert, serial, h) for h in ("sha1", "sha256")]
            assert all(_status(url, b) is ocsp.OCSPCertStatus.GOOD for b in bodies)
            fresh = tmp / "new.crl"
            ca.gencrl(fresh, "-crldays", "7")
            started = time.perf_counter()
            os.replace(fresh, crl)
            seen = produced = None
            while time.perf_counter() - started < 120 and (seen is None or produced is None):
                now = time.perf_counter() - started
                if seen is None and all(
                    _status(url, b) is ocsp.OCSPCertStatus.REVOKED for b in bodies
                ):
                    seen = now
                if produced is None and "hsm_ocsp_production_lag_seconds{" in _metrics(port):
                    produced = now
                time.sleep(0.05)
            print(f"a new revocation: answered revoked (both hashes) {seen:.1f} s after the "
                  f"new CRL was put in place; in the store {produced:.1f} s after")  # fmt: skip
        finally:
            server.stop()
    return 0


def _request(issuer: object, serial: int, algorithm: str) -> bytes:
    from tests.support.requests import build_request

    return build_request([(issuer, serial)], algorithm=algorithm)  # type: ignore[list-item]


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


if __name__ == "__main__":
    sys.exit(main())
