"""The revocations a host has seen, kept in ``state_dir/revocations.log`` (append-only).

One line an event, TAB-separated: ``R ca serial time reason invalidity hold`` (a
revocation first seen: Unix times, the CRLReason number or ``-``, the hold OID or
``-``), ``H ca serial`` (a certificateHold released), ``F ca serial`` (forgotten by
``hsm-ocsp revocations forget``: the operator's explicit word). Each event is written and
fsync'd before the index that shows it is taken into service, so a revocation is
remembered across a crash, a restart and a restored index (core/revocation_memory.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import HsmOcspError
from ..core.index import IndexSnapshot
from ..core.model import Revocation, RevocationReason
from ..core.revocation_memory import remember

__all__ = ["LEDGER_NAME", "Ledger"]

log = logging.getLogger("hsm_ocsp.index")
LEDGER_NAME = "revocations.log"


def _time(when: dt.datetime | None) -> str:
    return "-" if when is None else str(int(when.timestamp()))


def _line(ca: str, serial: int, revocation: Revocation) -> str:
    reason = "-" if revocation.reason is None else str(int(revocation.reason))
    fields = (
        ca,
        f"{serial:X}",
        _time(revocation.revocation_time),
        reason,
        _time(revocation.invalidity_date),
        revocation.hold_instruction or "-",
    )
    return "R\t" + "\t".join(fields) + "\n"


def _when(text: str) -> dt.datetime | None:
    return None if text == "-" else dt.datetime.fromtimestamp(int(text), dt.UTC)


def _parse(fields: list[str]) -> Revocation:
    time, reason, invalidity, hold = fields
    return Revocation(
        revocation_time=dt.datetime.fromtimestamp(int(time), dt.UTC),
        reason=None if reason == "-" else RevocationReason(int(reason)),
        invalidity_date=_when(invalidity),
        hold_instruction=None if hold == "-" else hold,
    )


class Ledger:
    """Every revocation seen, per CA; read whole at start, appended to after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held: dict[str, dict[int, Revocation]] = {}
        self.kept: dict[str, int] = {}  # per CA: revocations the index in service dropped
        self._lock = threading.Lock()
        self.reread()

    def reread(self) -> None:
        """Read the file again (at start; at a reload, to take up a ``forget``)."""
        held: dict[str, dict[int, Revocation]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise HsmOcspError(f"{self.path}: cannot read the revocation ledger: {exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("\t")
            try:
                ca, serial = fields[1], int(fields[2], 16)
                if fields[0] == "R" and len(fields) == 7:
                    held.setdefault(ca, {})[serial] = _parse(fields[3:])
                elif fields[0] in ("H", "F") and len(fields) == 3:
                    held.get(ca, {}).pop(serial, None)
                else:
                    raise ValueError(fields[0])
            except (ValueError, IndexError, OverflowError):  # a line cut by a crash: the last
                log.warning("%s:%d: not a ledger line, skipped", self.path, number)
        with self._lock:
            self._held = held

    def held(self, ca: str) -> dict[int, Revocation]:
        return self._held.get(ca, {})

    def apply(self, ca: str, snapshot: IndexSnapshot) -> IndexSnapshot:
        """``snapshot`` with every revocation of ``ca`` seen before laid over it; what it
        shows for the first time (and the holds it releases) written down first."""
        with self._lock:
            held = self._held.setdefault(ca, {})
            found = remember(snapshot, held)
            lines = [_line(ca, s, r) for s, r in found.new.items()]
            lines += [f"H\t{ca}\t{s:X}\n" for s in found.released]
            if lines:
                self._append(lines)
            held.update(found.new)
            for serial in found.released:
                del held[serial]
        if found.kept and self.kept.get(ca) != len(found.kept):
            log.warning(
                "CA %s: the index no longer shows %d revoked serial(s) (first %X); "
                "answered revoked all the same (hsm-ocsp revocations forget, to undo "
                "one)",
                ca,
                len(found.kept),
                found.kept[0],
            )
        self.kept[ca] = len(found.kept)
        return found.snapshot

    def forget(self, ca: str, serials: Iterable[int]) -> None:
        """The operator's word: these serials' revocations are no longer remembered."""
        self._append([f"F\t{ca}\t{s:X}\n" for s in serials])

    def _append(self, lines: list[str]) -> None:
        data = "".join(lines).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:  # not remembered: the index is not taken up either
            raise HsmOcspError(f"{self.path}: cannot write the revocation ledger: {exc}") from None
        finally:
            os.close(fd)
