"""A state volume that fills: a small tmpfs (root mounts it) and a file that takes the
rest of it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` (``4m``) at ``path``; False where that is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    return done.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


SMALL = 64 << 20  # the most a volume may hold for fill() to fill it


def fill(directory: Path) -> Path:
    """A file in ``directory`` written until the volume is full; delete it to free it.
    Only a small volume (a tmpfs of mount_tmpfs): never the machine's own disk."""
    info = os.statvfs(directory)
    if info.f_blocks * info.f_frsize > SMALL:
        raise AssertionError(f"{directory} is on a large volume: not filling it")
    ballast = directory / "ballast"
    with ballast.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 16))
                out.flush()
        except OSError:
            pass
    return ballast
