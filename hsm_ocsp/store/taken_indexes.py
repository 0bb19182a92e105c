"""The index version the answer store is true to, kept beside it: a warm restart then
withdraws only what changed while the host was down, instead of reading the whole store.

Once every change of an index version has been withdrawn (committed), the producer keeps
a copy of that version in ``state_dir/taken/`` (written whole, fsync'd, renamed in). At
the next start the index read now is compared with the copy at memcmp speed
(core/index_delta.py): the serials on the lines between the first and the last
difference are withdrawn, and no other record can be untrue. A copy is tied to the
store it speaks for (its identity in the name): a store set aside or replaced has none.
The CAs the store held answers for are listed too, so a CA dropped from the
configuration has its records withdrawn whole.

Anything unusual (no copy, another store, a change of more than a quarter of the file,
a line that does not parse) leaves the caller to read the store whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..core.index import IndexSnapshot
from ..core.index_image import decode_image, encode_image
from .ledger import LEDGER_NAME

__all__ = ["TakenIndexes"]

log = logging.getLogger("hsm_ocsp.store")
DIRECTORY = "taken"


class TakenIndexes:
    def __init__(self, state_dir: Path, store_identity: int) -> None:
        self.directory = state_dir / DIRECTORY
        self.identity = store_identity
        self.ledger = state_dir / LEDGER_NAME  # the revocations remembered (store/ledger.py)

    def copy_path(self, ca: str) -> Path:
        return self.directory / f"{ca}.{self.identity}.index"

    def held_cas(self) -> set[str] | None:
        """The CAs the store held answers for when last written down (None: unknown)."""
        try:
            data = json.loads((self.directory / f"cas.{self.identity}.json").read_text())
        except (OSError, ValueError):
            return None
        return set(data) if isinstance(data, list) else None

    def note_cas(self, names: list[str]) -> None:
        data = json.dumps(sorted(names)).encode()
        self._write(self.directory / f"cas.{self.identity}.json", data)

    def forget(self, ca: str) -> None:
        """The copy no longer speaks for the store (a change not yet withdrawn). Renamed
        aside, not deleted: on a full volume (the usual reason) freeing its pages would
        only let the store take a little more before it is full again."""
        for path in (self.image_path(ca), self.copy_path(ca)):
            with contextlib.suppress(OSError):
                path.replace(path.with_name(path.name + ".stale"))

    def seed(self, ca: str) -> tuple[Path, IndexSnapshot] | None:
        """The CA's kept version and the snapshot read from it, if both are sound. The
        snapshot has the revocations remembered then laid over it: if the memory changed
        since (a revocation forgotten while the host was down), it is not used."""
        try:
            info = os.stat(self.copy_path(ca))
            written = os.stat(self.image_path(ca)).st_mtime_ns
            data = self.image_path(ca).read_bytes()
        except OSError:
            return None
        try:
            if os.stat(self.ledger).st_mtime_ns >= written:
                return None
        except FileNotFoundError:
            pass  # nothing remembered yet: nothing to have changed
        snapshot = decode_image(data, (info.st_size, info.st_mtime_ns))
        return None if snapshot is None else (self.copy_path(ca), snapshot)

    def image_path(self, ca: str) -> Path:
        return self.directory / f"{ca}.{self.identity}.image"

    def write(
        self, ca: str, read: Callable[[BinaryIO], None], snapshot: IndexSnapshot | None = None
    ) -> bool:
        """Keep ``read`` (an IndexSource's ``copy_into``) as the CA's version, and the
        ``snapshot`` read from it (a warm start reads that instead of parsing the index
        whole); False, logged, if it cannot be written (the next start reads the store
        whole)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):  # never an image of another copy
                self.image_path(ca).unlink()
            partial = self.copy_path(ca).with_suffix(".new")
            with open(partial, "wb") as out:
                read(out)
                out.flush()
                os.fsync(out.fileno())
                info = os.fstat(out.fileno())
            partial.replace(self.copy_path(ca))
            if snapshot is not None:
                image = encode_image(snapshot, (info.st_size, info.st_mtime_ns))
                self._write(self.image_path(ca), image)
            return True
        except OSError as exc:
            log.warning(
                "CA %s: the index version taken could not be kept in %s (%s): the "
                "next start reads the answer store whole",
                ca,
                self.directory,
                exc.strerror,
            )
            self.forget(ca)
            return False

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".new")
            with open(partial, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc.strerror)
