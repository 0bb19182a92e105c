"""Load and reload a 1,000,000-line index; print seconds, and RSS by process.

    python benchmarks/index_scale.py [--lines 1000000] [--workers 1 2 4]

Target (issue 5): at most 2 s and 250 MB resident per process. The index is
generated in ``openssl ca``'s format, one line in ten revoked, 16-byte serials.
Each measurement runs in a fresh child process that first imports what a worker
imports, so its RSS is that of one worker; it loads the index, then reloads it
after one line changed (both versions are held during a reload: the peak).
benchmarks/reload_under_load.py does the same to a serving responder under load.

Then (issue 14) it runs benchmarks/workers_memory.py with the same number of lines:
a serving responder with 1, 2 and 4 workers (``--workers``; none: skip), the RSS
and PSS of its producer, each worker and each signer process, and what each added
worker costs (target: at most 50 MiB).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_index(path: Path, lines: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.pki import generated_index_lines

    with path.open("w") as out:
        for line in generated_index_lines(lines):
            out.write(line + "\n")


def write_revoked_copy(path: Path, out_path: Path) -> None:
    """``path`` with its first V line revoked, as ``openssl ca -revoke`` would write it."""
    done = False
    with path.open() as lines, out_path.open("w") as out:
        for line in lines:
            if not done and line.startswith("V\t"):
                fields = line.split("\t")
                fields[0], fields[2] = "R", "261124000000Z,keyCompromise"
                line = "\t".join(fields)
                done = True
            out.write(line)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(path: Path) -> None:
    """Load as a worker does (its modules imported first), then reload a changed file."""
    sys.path.insert(0, str(ROOT))
    import hsm_ocsp.server.app  # noqa: F401  # everything a worker holds besides the index
    from hsm_ocsp.server.index_source import IndexSource

    base = _rss_mib()
    source = IndexSource("scale", path)
    started = time.perf_counter()
    snapshot = source.load()
    seconds = time.perf_counter() - started
    loaded = _rss_mib()
    # A reload, as after ``openssl ca -revoke``: one line changed, the file replaced.
    path.with_suffix(".new").replace(path)
    started = time.perf_counter()
    source.load()
    reload_seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{len(snapshot):,} entries: load {seconds:.2f} s, reload {reload_seconds:.2f} s; "
        f"RSS MiB: {base:.0f} before, {loaded:.0f} loaded, peak {peak:.0f} "
        f"(during the reload both versions are held)"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workers", nargs="*", default=["1", "2", "4"])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure))
        return 0
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-index-") as tmp:
        path = Path(tmp) / "index.txt"
        write_index(path, args.lines)
        for _ in range(3):
            write_revoked_copy(path, path.with_suffix(".new"))
            subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True)
    if args.workers:
        by_process = [sys.executable, str(ROOT / "benchmarks" / "workers_memory.py")]
        by_process += ["--lines", str(args.lines), "--workers", *args.workers]
        subprocess.run(by_process, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
