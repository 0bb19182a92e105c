"""Fuzz the whole HTTP path of hsm-ocsp: never a 5xx, every OCSP answer right.

The cases and the checks are in tests/support/fuzz.py (the tests run them too);
this runs them from the command line: `python3 scripts/fuzz.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.fuzz import main

if __name__ == "__main__":
    sys.exit(main())
