"""A token that behaves as hardware does: SoftHSM behind tests/support/behaving_token.c,
built here with gcc (p11-kit's pkcs11.h), its behaviours switched by HSM_SHIM_*
environment variables (idle sessions dropped, read-only sessions refused, every Nth
signature failing, latency)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .softhsm import MODULE

SOURCE = Path(__file__).with_name("behaving_token.c")


def build(directory: Path) -> Path:
    library = directory / "behaving_token.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Werror",
            "-I/usr/include/p11-kit-1",
            "-o",
            str(library),
            str(SOURCE),
            "-ldl",
            "-lpthread",
        ],
        check=True,
    )
    return library


def most_sessions(counts: Path) -> int:
    """The most sessions ever open at once over every process that named ``counts``
    (HSM_SHIM_SESSIONS_FILE); 0 if none was opened."""
    if not counts.exists():
        return 0
    data = counts.read_bytes()
    return int.from_bytes(data[8:16], "little") if len(data) >= 16 else 0


def environment(**behaviours: int) -> dict[str, str]:
    """HSM_SHIM_* for ``idle_ms=``, ``no_ro=``, ``fail_every=``, ``fail_rv=``,
    ``latency_ms=``, ``max_sessions=``, ``find_per_s=``, over SoftHSM."""
    found = {"HSM_SHIM_REAL": MODULE}
    found.update({f"HSM_SHIM_{name.upper()}": str(value) for name, value in behaviours.items()})
    return found
