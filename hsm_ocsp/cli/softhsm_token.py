"""The SoftHSM token of the demo (and of the tests, benchmarks and soak), made by
softhsm/init-token.sh: the checkout's top-level softhsm/, which an installed wheel
carries as hsm_ocsp/softhsm."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..core.errors import HsmOcspError


def init_token_script() -> Path:
    """``init-token.sh`` of this installation: the wheel's package data, or the
    checkout's softhsm/ (an editable install, the tests)."""
    package = Path(__file__).resolve().parent.parent
    for script in (
        package / "softhsm" / "init-token.sh",
        package.parent / "softhsm" / "init-token.sh",
    ):
        if script.is_file():
            return script
    raise HsmOcspError(f"{package / 'softhsm'} not found: this hsm-ocsp installation is incomplete")


def run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise HsmOcspError(
            f"{Path(str(args[0])).name} {args[1] if len(args) > 1 else ''} failed "
            f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def init_softhsm_token(conf: Path, *, label: str, pin: str, so_pin: str) -> None:
    """Make the SoftHSM token ``label`` (kept if it exists) through softhsm/init-token.sh.

    ``conf`` is the softhsm2.conf to use, written when missing with the token
    directory beside it.
    """
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(conf),
        "TOKEN_LABEL": label,
        "HSM_OCSP_PIN": pin,
        "HSM_OCSP_SO_PIN": so_pin,
    }
    run("/bin/sh", init_token_script(), env=env)  # by sh: a wheel may drop the exec bit
