"""One answer signed: the certificate that may sign now, nextUpdate within its life,
ResponseData encoded, the signature waiting its turn in the sign queue (a bounded
line per kind), the whole response wrapped. Never a signature that no valid
certificate vouches for: such a CA answers tryLater, logged once a minute.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from .audit import Audit
from .errors import HsmOcspError
from .index import IndexSnapshot
from .model import NON_ISSUED, OCSPResponseStatus
from .ocsp import CertID, SingleResponse
from .pre_production import Reason
from .reply import UNSUCCESSFUL, Events, Reply, Signer
from .responder import Issuer, SigningCertificate, single_responses
from .response import encode_basic_response, encode_response_data, encode_successful
from .sign_queue import Busy, Kind, SignQueue

__all__ = ["AnswerSigner"]

log = logging.getLogger("hsm_ocsp.service")
_REASONS = {
    Kind.ISSUED: Reason.LIVE,
    Kind.MULTI: Reason.LIVE,
    Kind.NONCE: Reason.NONCE,
    Kind.UNKNOWN: Reason.UNKNOWN,
    Kind.AHEAD: Reason.FILL,  # the producer says which (its reason argument)
}


class AnswerSigner:
    """Signs answers for the service; the token (or a test's key) is ``signer``."""

    def __init__(
        self,
        signer: Signer,
        max_pending_signatures: int,
        events: Events,
        clock: Callable[[], dt.datetime],
        audit: Audit | None = None,
    ) -> None:
        self._signer = signer
        self._audit = audit
        # The line of each signature waiting in the queue, written at its turn, right
        # before the token is asked: never a line for a signature not asked for.
        self._lines: dict[int, Mapping[str, object]] = {}
        self._queue = SignQueue(
            signer.sign if audit is None else self._sign_logged, max_pending_signatures
        )
        self.events = events
        self._clock = clock
        self._said: dict[tuple[str, str], float] = {}  # what was logged, and when

    async def sign(
        self,
        issuer: Issuer,
        snapshot: IndexSnapshot,
        cert_ids: Sequence[CertID],
        nonce: bytes | None,
        kind: Kind,
        reason: Reason | None = None,
    ) -> Reply:
        """Sign the answer for ``cert_ids``; ``reason`` is the producer's, for its own
        signatures (a client's answer is named by its ``kind``)."""
        why = (reason or _REASONS[kind]).value
        now = self._clock()
        signer = issuer.signer_at(now)
        if signer is None:  # never a signature no valid certificate vouches for
            self._signer_invalid(issuer, now)
            return UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        next_update = self._next_update(issuer, signer, snapshot, now)
        if next_update is None:
            return UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        singles = single_responses(issuer, snapshot, cert_ids)
        tbs = encode_response_data(
            responder_key_hash=signer.responder_key_hash,
            produced_at=now,
            this_update=now,
            next_update=next_update,
            responses=singles,
            nonce=nonce,
            extended_revoke=any(s.revocation is NON_ISSUED for s in singles),
        )
        started = time.perf_counter()
        if self._audit is not None:
            self._lines[id(tbs)] = _line_fields(
                issuer, signer.key, now, next_update, singles, why, tbs
            )
        try:
            signature = await self._queue.sign(kind, signer.key, tbs)
        except Busy:
            self.events.sign_failed()
            return UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        except HsmOcspError as exc:
            self.events.sign_failed()
            log.warning("cannot sign for CA %s: %s", issuer.name, exc)
            return UNSUCCESSFUL[OCSPResponseStatus.TRY_LATER]
        finally:
            self._lines.pop(id(tbs), None)
        self.events.signed(time.perf_counter() - started)
        self.events.signed_for(why)
        body = encode_successful(
            encode_basic_response(
                tbs,
                self._signer.algorithm_identifier(signer.key),
                signature,
                () if signer.der is None else (signer.der,),
            )
        )
        return Reply(
            body=body,
            status=OCSPResponseStatus.SUCCESSFUL,
            ca=issuer.name,
            cert_statuses=tuple(s.status for s in singles),
            produced_at=now,
            next_update=next_update,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        )

    def _next_update(
        self,
        issuer: Issuer,
        signer: SigningCertificate,
        snapshot: IndexSnapshot,
        now: dt.datetime,
    ) -> dt.datetime | None:
        """The answer's nextUpdate: the CA's validity from now, cut so that no answer
        outlives its signer nor the CRL its status comes from; None when that CRL is
        past its own nextUpdate (a freshness the source does not have: no answer)."""
        next_update = now + issuer.validity
        if next_update > signer.not_after:
            next_update = signer.not_after.replace(microsecond=0)
            self._validity_capped(issuer, signer)
        source_until = snapshot.valid_until
        if source_until is None or next_update <= source_until:
            return next_update
        if source_until <= now:
            self._source_expired(issuer, source_until, now)
            return None
        return source_until.replace(microsecond=0)

    async def _sign_logged(self, name: str, data: bytes) -> bytes:
        """The token's signature, its audit line written first; with audit.required a line
        that cannot be written stops the signature (the answer is tryLater)."""
        assert self._audit is not None
        fields = self._lines.pop(id(data), None)
        if fields is not None and not self._audit.write(fields) and self._audit.required:
            raise AuditError("the audit trail cannot be written (audit.required): not signed")
        return await self._signer.sign(name, data)

    def _signer_invalid(self, issuer: Issuer, now: dt.datetime) -> None:
        self.events.signer_invalid(issuer.name)
        if now.timestamp() - self._said.get(("invalid", issuer.name), -1e9) < 60:
            return
        self._said["invalid", issuer.name] = now.timestamp()
        soonest = min(issuer.signers, key=lambda s: s.not_before)
        if all(now < s.not_before for s in issuer.signers):
            when = f"is not valid before {soonest.not_before:%Y-%m-%d %H:%M:%S} UTC"
        else:
            latest = max(s.not_after for s in issuer.signers)
            when = f"expired {latest:%Y-%m-%d %H:%M:%S} UTC"
        log.error("CA %s: the signing certificate %s: answering tryLater", issuer.name, when)

    def _source_expired(self, issuer: Issuer, until: dt.datetime, now: dt.datetime) -> None:
        self.events.sign_failed()
        if now.timestamp() - self._said.get(("expired", issuer.name), -1e9) >= 60:
            self._said["expired", issuer.name] = now.timestamp()
            log.error(
                "CA %s: the CRLs in service are past their nextUpdate %s UTC: answers "
                "that need a signature are tryLater",
                issuer.name,
                f"{until:%Y-%m-%d %H:%M:%S}",
            )

    def _validity_capped(self, issuer: Issuer, signer: SigningCertificate) -> None:
        self.events.validity_capped(issuer.name)
        if self._said.get(("capped", issuer.name)) != signer.not_after.timestamp():
            self._said["capped", issuer.name] = signer.not_after.timestamp()
            log.warning(
                "CA %s: nextUpdate cut to the signing certificate's notAfter %s UTC "
                "(less than the validity %s is left)",
                issuer.name,
                f"{signer.not_after:%Y-%m-%d %H:%M:%S}",
                issuer.validity,
            )


class AuditError(HsmOcspError):
    """A signature's audit line could not be written, and audit.required says no line,
    no signature."""


def _line_fields(
    issuer: Issuer,
    key: str,
    now: dt.datetime,
    next_update: dt.datetime,
    singles: Sequence[SingleResponse],
    reason: str,
    tbs: bytes,
) -> dict[str, object]:
    """What the audit trail says of one signature (core/audit.py)."""
    return {
        "time": f"{now:%Y-%m-%dT%H:%M:%SZ}",
        "ca": issuer.name,
        "key": key,
        "reason": reason,
        "this_update": f"{now:%Y-%m-%dT%H:%M:%SZ}",
        "next_update": f"{next_update:%Y-%m-%dT%H:%M:%SZ}",
        "certs": [
            [f"{s.cert_id.serial_number:X}", s.cert_id.hash_algorithm or "?", s.status.value]
            for s in singles
        ],
        "signed_sha256": hashlib.sha256(tbs).hexdigest(),
    }
