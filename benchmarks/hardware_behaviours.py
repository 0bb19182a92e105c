"""Each hardware behaviour of issue 27 for a minute: 30 s of cached and nonce requests,
a quiet period, 30 s more, against ``serve`` with two workers on SoftHSM behind
tests/support/behaving_token.c (tests/test_hardware_behaviours.py, its load lengthened).

    python benchmarks/hardware_behaviours.py [--seconds 30]

Prints one line a behaviour: the answers, every one signed and verified (the test fails
otherwise: a tryLater, /readyz failing, "token lost"), and what was ridden out.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    env = {**os.environ, "HSM_TEST_BEHAVIOUR_SECONDS": str(args.seconds)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-n", "0", "-p", "no:cacheprovider",
         "tests/test_hardware_behaviours.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        found = re.search(r"(.*: \d+ answers, ridden out .*|signed again .*)", line)
        if found:
            print(found.group(1).lstrip("."))
    print(done.stdout.splitlines()[-1] if done.stdout else done.stderr[-2000:])
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
