"""The PIN in a running responder: read once, out of the environment, never in a core dump.

``serve`` reads the PIN before any worker or signer starts and removes its
variable from the environment, so no child (a signer, a worker, anything they
run) inherits it; the workers get it in memory and pass it to their signer
over a socket. Every process that holds it cannot dump core: ``RLIMIT_CORE``
is 0 (inherited by children) and ``PR_SET_DUMPABLE`` is 0 (which also keeps
other processes of the same user from reading its memory through /proc).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource

from .file import Config, read_pin

__all__ = ["forbid_core_dumps", "take_pin"]

_PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    """No core file from this process or its children, and no ptrace by its user."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def take_pin(config: Config) -> str:
    """The PIN as the config says; its environment variable is gone afterwards.

    The value is also overwritten where exec put it (what /proc/PID/environ
    shows, and what every forked worker would copy), not only unset.
    """
    pin = read_pin(config.token, config.path)
    name = config.token.pin_env
    if name is not None and name in os.environ:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None)
            libc.getenv.restype = ctypes.c_void_p
            value = libc.getenv(name.encode())
            if value:
                ctypes.memset(value, 0, len(os.environb.get(name.encode(), b"")))
        os.environ.pop(name, None)
    return pin
