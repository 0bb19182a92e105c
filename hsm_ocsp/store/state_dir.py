"""The state directory belongs to one ``serve`` at a time.

Two instances on one ``state_dir`` (a second unit started by mistake, an old container
not yet gone) would each trust the store as their own: the second, with an older index,
could write back answers the first had withdrawn. ``serve`` takes an exclusive lock on
``state_dir/serve.lock`` before anything else and holds it while any of its processes
lives (the descriptor is inherited by every child); a second ``serve`` is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StateDirBusy", "lock_state_dir"]

LOCK_NAME = "serve.lock"


class StateDirBusy(Exception):
    """Another process holds the state directory; ``holder`` is its PID, as it wrote it."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock_state_dir(directory: Path) -> int:
    """The descriptor that holds the lock (kept open for the life of serve)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirBusy(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(fd, True)  # the producer and workers hold it too (fork)
    return fd
