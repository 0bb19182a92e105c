"""The SoftHSM token of the demo (and of the tests, benchmarks and soak), made by the
package's own data/init-token.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..core.errors import HsmOcspError


def init_token_script() -> Path:
    """``init-token.sh``, package data of this installation."""
    script = Path(__file__).resolve().parent.parent / "data" / "init-token.sh"
    if not script.is_file():
        raise HsmOcspError(f"{script} not found: this hsm-ocsp installation is incomplete")
    return script


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
    """Make the SoftHSM token ``label`` (kept if it exists) through data/init-token.sh.

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
