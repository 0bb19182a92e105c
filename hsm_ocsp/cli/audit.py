"""``hsm-ocsp audit verify FILES...``: the audit trail checked line by line (core/audit.py).
Exit 0 when every line follows the one before it, 1 naming each line that does not."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from ..core.audit import verify
from ..core.errors import EXIT_FAILURE, EXIT_OK, ConfigError

__all__ = ["run_audit_verify"]


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as file:
        yield from file


def run_audit_verify(args: argparse.Namespace) -> int:
    for path in args.files:
        try:
            open(path, "rb").close()
        except OSError as exc:
            raise ConfigError(path, "(file)", f"cannot read: {exc.strerror}") from None
    faults = list(verify((path, _lines(path)) for path in args.files))
    for fault in faults:
        print(fault)
    lines = sum(1 for path in args.files for _ in _lines(path))
    if faults:
        print(f"{len(faults)} fault(s) in {lines} lines", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{lines} lines, each following the one before")
    return EXIT_OK
