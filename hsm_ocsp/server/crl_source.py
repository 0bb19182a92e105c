"""One CA's status from its CRLs: each place watched, each CRL judged before it is
taken (core/crl.py), the last good ones kept in service, one snapshot made of them.

It is a status source like IndexSource (the producer, the watchers, the metrics and
the revocation memory see no difference): ``check()`` once a tick in the watcher's
thread; ``snapshot`` replaced by one assignment.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..config.model import CAConfig, CrlConfig
from ..core.crl import CrlFacts, CrlRefused, combine, later_than, read_crl
from ..core.errors import HsmOcspError, IndexFormatError
from ..core.index import IndexSnapshot
from ..store.ledger import Ledger
from .crl_fetch import FetchError, Place, place_for
from .issued_serials import IssuedSerials
from .source_events import SILENT, SourceEvents

__all__ = ["CrlSource"]

log = logging.getLogger("hsm_ocsp.crl")


class CrlSource:
    """The CRLs (full, partitions, deltas) and the issued serials of one CA."""

    def __init__(
        self,
        ca: CAConfig,
        crl: CrlConfig,
        *,
        ledger: Ledger | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        keep_in: Path | None = None,
        events: SourceEvents | None = None,
    ) -> None:
        """``keep_in``: a directory (in state_dir) where each CRL taken is kept, so that a
        restart while its place is unreachable starts from it (judged again first)."""
        self.name = ca.name
        self.certificate = ca.certificate
        self.config = crl
        self.path: Path | str = crl.fulls[0]  # for messages
        self.ledger = ledger
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        every = crl.fetch_interval.total_seconds()
        self._fulls = [place_for(p, crl.max_bytes, every) for p in crl.fulls]
        self._deltas = [place_for(p, crl.max_bytes, every) for p in crl.deltas]
        subject = ca.certificate.subject
        self._issued = (
            None if crl.issued is None else IssuedSerials(crl.issued, crl.max_bytes, subject)
        )
        self.in_service: dict[str, CrlFacts] = {}  # place -> the CRL taken from it
        self.snapshot: IndexSnapshot | None = None
        self.untaken = False
        self.loading = False
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.checked_at = 0.0
        self.events = events if events is not None else SILENT
        self._unused: tuple[str, ...] = ()
        self._failures: dict[str, str] = {}  # place -> what failed there last (said once)
        self._last_failure: tuple[str, str] | None = None
        self._keep_in = keep_in

    # --- what the rest asks of a status source --------------------------------------

    @property
    def number(self) -> int | None:
        """The CRL number of the (first) full CRL in service."""
        first = self.in_service.get(self._fulls[0].name)
        return None if first is None else first.number

    @property
    def valid_until(self) -> dt.datetime | None:
        return None if self.snapshot is None else self.snapshot.valid_until

    def expired_for(self, now: dt.datetime | None = None) -> float:
        """Seconds the CRLs in service are past their nextUpdate (0: not)."""
        until = self.valid_until
        now = now or self._clock()
        return 0.0 if until is None or now < until else (now - until).total_seconds()

    def fresh(self, within: float, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self.checked_at < within

    def stale_for(self, now: float | None = None) -> float:
        if self.failing_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.failing_since

    def load(self) -> IndexSnapshot:
        """Read every place now (a URL: its first fetch awaited); IndexFormatError if no
        status can be made."""
        for place in self._fulls + self._deltas:
            place.ready()
        self._from_kept(self._clock())
        self.check(force=True)
        if self.snapshot is None:
            where, problem = self._last_failure or (self.path, "no CRL taken")
            raise IndexFormatError(where, None, problem)
        return self.snapshot

    def check(self, *, force: bool = False) -> bool:
        """Take what is new at every place; True if a new snapshot is in."""
        try:
            return self._check(force)
        finally:
            self.checked_at = time.monotonic()

    def close(self) -> None:
        for place in self._fulls + self._deltas:
            place.close()

    # --- the work ----------------------------------------------------------------------

    def _check(self, force: bool) -> bool:
        if force:
            for place in self._fulls + self._deltas:
                place.again()
        now = self._clock()
        self.loading = True
        try:
            changed = any([self._take(place, now) for place in self._fulls + self._deltas])
            changed = self._issued_changed() or changed
        finally:
            self.loading = False
        if self.untaken:
            changed = True  # taken, not yet written down: try again
        if not changed and not force:
            return False
        if not all(p.name in self.in_service for p in self._fulls):
            return False  # not every partition yet: no status (the failures are said)
        if self._issued is not None and self._issued.serials is None:
            return False
        return self._combine()

    def _kept_path(self, place: Place) -> Path | None:
        if self._keep_in is None:
            return None
        digest = hashlib.sha256(place.name.encode()).hexdigest()[:32]
        return self._keep_in / f"{self.name}-{digest}.crl"

    def _from_kept(self, now: dt.datetime) -> None:
        """At start: the CRLs kept by the last run, judged as any other (an expired one is
        refused), so a place unreachable now does not leave the CA without status."""
        for place in self._fulls + self._deltas:
            path = self._kept_path(place)
            if path is not None and path.is_file() and place.name not in self.in_service:
                with contextlib.suppress(OSError):
                    self._judge(place, path.read_bytes(), now, kept=True)

    def _keep(self, place: Place, data: bytes) -> None:
        path = self._kept_path(place)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".new")
            partial.write_bytes(data)
            partial.replace(path)
        except OSError as exc:  # the CRL is in service all the same
            log.warning(
                "CA %s: the CRL from %s could not be kept in %s: %s",
                self.name,
                place.name,
                path.parent,
                exc.strerror,
            )

    def _take(self, place: Place, now: dt.datetime) -> bool:
        """New bytes at ``place`` judged; True if a CRL was taken."""
        try:
            data = place.take()
        except FetchError as exc:
            self._say(place.name, f"cannot fetch: {_reason(exc, place.name)}", "fetch")
            return False
        if data is None:
            return False
        return self._judge(place, data, now)

    def _judge(self, place: Place, data: bytes, now: dt.datetime, *, kept: bool = False) -> bool:
        try:
            facts = read_crl(data, self.certificate, now, self.config.issuer)
        except CrlRefused as exc:
            if exc.label == "time":
                place.again()  # a clock ahead of ours: the same CRL may do in a moment
            self._say(place.name, f"CRL refused: {exc}", exc.label)
            return False
        old = self.in_service.get(place.name)
        why = self._out_of_order(place, facts, old)
        if why is not None:
            self._say(place.name, f"CRL refused: {why}", "order")
            return False
        self._failures.pop(place.name, None)
        if old is not None and old.number == facts.number and old.this_update == facts.this_update:
            return False  # the same CRL again
        self.in_service[place.name] = facts
        if not kept:
            self._keep(place, data)
        until = "none" if facts.next_update is None else f"{facts.next_update:%Y-%m-%d %H:%M:%S}Z"
        log.info(
            "CA %s: CRL %s taken from %s%s (%d entries, nextUpdate %s)",
            self.name,
            facts.number,
            place.name,
            " (kept by the last run)" if kept else "",
            len(facts.entries),
            until,
        )
        return True

    def _out_of_order(self, place: Place, facts: CrlFacts, old: CrlFacts | None) -> str | None:
        """Why ``facts`` may not follow ``old`` from ``place`` (older, or a delta CRL
        where a full one is expected, or the other way round); None if it may."""
        why = None if old is None else later_than(facts, old)
        if why is None and facts.delta != (place in self._deltas):
            why = (
                "a delta CRL where a full one is expected"
                if facts.delta
                else ("a full CRL where a delta is expected")
            )
        return why

    def _issued_changed(self) -> bool:
        if self._issued is None:
            return False
        try:
            return self._issued.read()
        except FetchError as exc:
            where = str(self._issued.path)
            self._say(where, f"issued serials not read: {_reason(exc, where)}", "issued")
            return False

    def _combine(self) -> bool:
        fulls = [self.in_service[p.name] for p in self._fulls]
        deltas = [self.in_service[p.name] for p in self._deltas if p.name in self.in_service]
        issued = None if self._issued is None else self._issued.serials
        combined = combine(fulls, deltas, issued)
        if combined.unused_deltas != self._unused:
            self._unused = combined.unused_deltas
            for why in combined.unused_deltas:
                log.info("CA %s: delta CRL not applied: %s", self.name, why)
        snapshot = combined.snapshot
        if self.ledger is not None:
            try:
                snapshot = self.ledger.apply(self.name, snapshot)
            except HsmOcspError as exc:
                self.untaken = True
                self._failed(
                    IndexFormatError(self.path, None, f"not taken up: {exc}", transient=True)
                )
                return False
        self.untaken = False
        self.snapshot = snapshot
        self.last_error = None
        self.failing_since = None
        self.events.reloaded(snapshot, self.number)
        log.info(
            "CA %s: status from CRLs: %d revoked%s",
            self.name,
            snapshot.counts["R"],
            "" if issued is None else f", {len(issued)} issued",
        )
        return True

    def _say(self, where: str, problem: str, label: str) -> None:
        """Log a failure once (until it changes), count it, keep the last good CRL. Not a
        staleness: the CRLs in service are good until their nextUpdate (``expired_for``)."""
        self.events.refused(label)
        if self._failures.get(where) == problem:
            return
        self._failures[where] = problem
        self.last_error = f"{where}: {problem}"
        self._last_failure = (where, problem)
        log.error("CA %s: %s: %s; the CRLs in service stay", self.name, where, problem)
        self.events.failed(IndexFormatError(where, None, problem))

    def _failed(self, exc: IndexFormatError) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        if self.last_error == str(exc):
            return
        self.last_error = str(exc)
        log.error("CRL for CA %s not taken, keeping the last good one: %s", self.name, exc)
        self.events.failed(exc)


def _reason(exc: FetchError, where: str) -> str:
    """The failure without the place it names first (said once, by the caller)."""
    return str(exc).removeprefix(f"{where}: ")
