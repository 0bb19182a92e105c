"""One failed login per start: a PIN the token refused is never tried again.

Each failed ``C_Login`` counts towards the token's lock-out (OpenCryptoki locks
the user PIN after a few, a TPM enters dictionary-attack lock-out), and every
worker's signer logs in on its own. The gate is a directory shared by all
processes of one responder: a login happens only under its lock, and a login
refused for the PIN itself (incorrect, locked, expired, invalid) leaves a mark
there that stops every later attempt, in every worker and every new signer,
until the operator acts: ``serve`` clears it on SIGHUP, and a restart makes a
new gate.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LoginGate", "LoginRefused"]

log = logging.getLogger("hsm_ocsp.token")
_MARK = "refused"
_LOCK = "lock"


class LoginRefused(Exception):
    """An earlier login was refused for its PIN; no attempt is made."""


class LoginGate:
    """The gate directory; every method may be called from any process of the responder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls) -> LoginGate:
        """A new, private gate directory (remove it with :meth:`remove`)."""
        return cls(Path(tempfile.mkdtemp(prefix="hsm-ocsp-login-")))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def refused(self) -> str | None:
        """Why logins are stopped, or None while they may be tried."""
        try:
            return (self.directory / _MARK).read_text() or "the PIN was refused"
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Hold the lock around one login; LoginRefused if a PIN was refused already."""
        with open(self.directory / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                reason = self.refused()
                if reason is not None:
                    raise LoginRefused(reason)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def refuse(self, reason: str) -> None:
        """Stop every later login (call while :meth:`attempt` holds the lock)."""
        mark = self.directory / _MARK
        mark.with_suffix(".new").write_text(reason)
        os.replace(mark.with_suffix(".new"), mark)
        log.error(
            "%s: no more login attempts until the PIN is fixed and the responder "
            "reloaded (SIGHUP) or restarted",
            reason,
        )

    def reset(self) -> None:
        """The operator acted (SIGHUP): logins may be tried again, once."""
        if self.refused() is not None:
            log.warning("login allowed again (reload)")
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _MARK).unlink()
