"""Soak hsm-ocsp: mixed load for minutes, every answer checked, memory watched.

The cases and the checks are in tests/support/soak.py (the tests run them too);
this runs them from the command line: `python3 scripts/soak.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.soak import main

if __name__ == "__main__":
    sys.exit(main())
