"""Load a 1,000,000-line index the way a worker does; print seconds and RSS.

    python benchmarks/index_scale.py [--lines 1000000]

Target (issue 5): at most 2 s and 250 MB resident per process. The index is
generated in ``openssl ca``'s format, one line in ten revoked, 16-byte serials.
The parse runs in a fresh child process so its RSS is that of one worker.
"""

from __future__ import annotations

import argparse
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_index(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for i in range(lines):
            serial = "0" + secrets.token_hex(16).upper()[1:]
            if i % 10 == 0:
                out.write(
                    f"R\t301231235959Z\t250101000000Z,keyCompromise\t{serial}\tunknown\t/CN=r{i}\n"
                )
            else:
                out.write(f"V\t301231235959Z\t\t{serial}\tunknown\t/CN=host-{i}.example.com\n")


def measure(path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from hsm_ocsp.index_source import IndexSource

    source = IndexSource("scale", path)
    started = time.perf_counter()
    snapshot = source.load()
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(snapshot):,} entries in {seconds:.2f} s, peak RSS {rss_mb:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure))
        return 0
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-index-") as tmp:
        path = Path(tmp) / "index.txt"
        write_index(path, args.lines)
        for _ in range(3):
            subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
