"""A process that holds the PIN never dumps core, and its memory is not readable by
other processes of its user (RLIMIT_CORE 0, inherited by its children; PR_SET_DUMPABLE 0,
which PR_SET_DUMPABLE resets at exec: each process that holds the PIN calls this)."""

from __future__ import annotations

import contextlib
import ctypes
import resource

__all__ = ["forbid_core_dumps"]

_PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    """No core file from this process or its children, and no ptrace by its user."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
