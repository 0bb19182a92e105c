"""A reload decided once: the supervisor's accepted configuration, handed to its children.

On SIGHUP the supervisor reads the configuration file once, decides (it parses, nothing
that needs a restart changed, a new key is on the token and signs), and only then writes
the bytes it accepted here, numbered, before it passes SIGHUP on. The producer and the
workers take exactly those bytes (checked by their SHA-256), never the file as it may be
a moment later, and each numbered reload once: a reload the supervisor refused leaves
the last accepted one here, which every process has taken or takes now (one that was
still reading it when the refused SIGHUP came), and nothing new. (The same bytes may
come again in a later reload: the certificates a directory holds, read again.)
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["Accepted", "Handoff", "accept", "accepted", "discard"]

_NAME = "reload-accepted.toml"
_HEADER = re.compile(rb"# hsm-ocsp reload (\d+) sha256 ([0-9a-f]{64})\n")


class Accepted:
    """The bytes of an accepted configuration, its reload number and SHA-256 (hex)."""

    def __init__(self, data: bytes, number: int) -> None:
        self.data = data
        self.number = number
        self.digest = hashlib.sha256(data).hexdigest()

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def accept(state_dir: Path, data: bytes, number: int) -> Accepted:
    """Write ``data`` as reload ``number``'s accepted configuration (whole or not at all)."""
    taken = Accepted(data, number)
    path = state_dir / _NAME
    temporary = path.with_name(path.name + ".new")
    with open(temporary, "wb") as file:
        file.write(b"# hsm-ocsp reload %d sha256 %s\n" % (number, taken.digest.encode()))
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return taken


def accepted(state_dir: Path) -> Accepted | None:
    """The configuration the supervisor accepted last; None if it accepted none (or the
    file is not one it wrote whole)."""
    try:
        raw = (state_dir / _NAME).read_bytes()
    except OSError:
        return None
    header = _HEADER.match(raw)
    if header is None:
        return None
    found = Accepted(raw[header.end() :], int(header[1]))
    return found if found.digest == header[2].decode() else None


def discard(state_dir: Path) -> None:
    """Nothing accepted (a serve starting: a reload a run before accepted is not ours)."""
    (state_dir / _NAME).unlink(missing_ok=True)


class Handoff:
    """A child's side (the producer, a worker): the reload the supervisor accepted that
    this process has not taken yet."""

    def __init__(self, state_dir: Path) -> None:
        """Made in a child the supervisor forked with its running configuration: that
        is the last reload it accepted (if any), so it counts as taken already."""
        self.state_dir = state_dir
        found = accepted(state_dir)
        self.taken = -1 if found is None else found.number

    def new(self) -> Accepted | None:
        found = accepted(self.state_dir)
        return None if found is None or found.number == self.taken else found

    def took(self, found: Accepted) -> None:
        self.taken = found.number
