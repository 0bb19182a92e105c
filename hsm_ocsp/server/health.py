"""/healthz (the process answers) and /readyz (it can answer right now)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from aiohttp import web

from ..config.model import Config
from ..store.vouch import VOUCH_FOR
from .crl_source import CrlSource
from .production import Production
from .status_source import StatusSource

if TYPE_CHECKING:
    from .signing_host import SigningHost


def stale_indexes(host: SigningHost) -> dict[str, float]:
    """CA name -> seconds its index file has not been taken up, past the bound."""
    bound = host.config.server.index_stale_after
    stale = {name: source.stale_for() for name, source in host.sources.items()}
    return {name: seconds for name, seconds in stale.items() if seconds > bound}


def signers_out_of_validity(host: SigningHost) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    return [issuer.name for issuer in host.service.issuers if not issuer.signer_valid_at(now)]


def problems(host: SigningHost) -> list[str]:
    """What keeps the process that holds the token and indexes from answering now."""
    sources, production = host.sources, host.production
    found = [
        f"status of CA {name} (its index or CRLs): not loaded"
        for name, source in sources.items()
        if source.snapshot is None
    ]
    found += [
        f"index {name}: not taken up for {seconds:.0f} s ({sources[name].last_error})"
        for name, seconds in stale_indexes(host).items()
    ]
    found += [
        f"index {name}: its file has not been looked at for over {VOUCH_FOR:.0f} s (a file "
        "system that does not answer?); its CA answers tryLater"
        for name, source in sources.items()
        if source.snapshot is not None and not source.fresh(VOUCH_FOR)
    ]
    found += _crl_expired(host)
    found += [
        f"CA {name}: its signing certificate is not valid now (answers are tryLater)"
        for name in signers_out_of_validity(host)
    ]
    if production is not None:
        found += [
            f"CA {ca.name}: {production.unwithdrawn(ca.name)} changed serials not yet "
            "withdrawn from the store (it cannot commit; tried again every second)"
            for ca in host.config.cas
            if production.unwithdrawn(ca.name)
        ]
    return found + margins(host.config, production, sources) + _token(host)


def _crl_expired(host: SigningHost) -> list[str]:
    """CAs whose CRLs are past their nextUpdate (by more than ca.crl_grace)."""
    found = []
    for ca in host.config.cas:
        source = host.sources.get(ca.name)
        if ca.crl is None or not isinstance(source, CrlSource):
            continue
        late = source.expired_for()
        if late > 0:
            until = f"{source.valid_until:%Y-%m-%d %H:%M:%S}Z"
            line = (
                f"CA {ca.name}: its CRLs are past their nextUpdate {until} and no newer "
                f"one was taken ({source.last_error}); answers that need a signature are "
                "tryLater"
            )
            found.append(line if late > ca.crl.grace.total_seconds() else DEGRADED + line)
    return found


def _token(host: SigningHost) -> list[str]:
    """The token's state: a readiness problem only where answers depend on it. A host
    whose store holds a current answer for every serial of its CAs answers correctly
    without it (until the answers near their nextUpdate: ``margins``), so a token outage
    is then a degradation (``/healthz``, ``hsm_ocsp_token_up``), not unreadiness: else
    every instance leaves the load balancer at once, exactly when the store can serve."""
    token, keys, production = host.token, host.keys, host.production
    found = []
    if not token.up:
        found.append(f"token: {token.last_error or 'not connected'}")
    elif not keys.proven:
        found.append("token: the keys are not proven yet")
    if token.gate is not None and (refused := token.gate.refused()) is not None:
        found.append(f"token: login refused ({refused}); fix the PIN, then SIGHUP")
    complete = production is not None and all(
        production.complete.get(ca.name) for ca in host.config.cas
    )
    return [DEGRADED + line for line in found] if complete else found


DEGRADED = "degraded: "  # a line of /healthz that does not fail readiness


def margins(
    config: Config, production: Production | None, sources: dict[str, StatusSource]
) -> list[str]:
    """CAs with a stored answer closer to its nextUpdate than producer.min_margin (or a
    quarter of the CA's validity, if less): its refresh did not come."""
    if production is None:
        return []
    now = dt.datetime.now(dt.UTC).timestamp()
    found = []
    for ca in config.cas:
        soonest = production.soonest.get(ca.name)
        source = sources.get(ca.name)
        until = None if source is None or source.snapshot is None else source.snapshot.valid_until
        if soonest is not None and until is not None and soonest >= until.timestamp() - 1:
            continue  # as far as its CRLs allow: _crl_expired says when they run out
        margin = min(config.producer.min_margin, ca.validity / 4).total_seconds()
        if soonest is not None and soonest - now < margin:
            found.append(
                f"CA {ca.name}: a stored answer is {max(0, soonest - now):.0f} s from "
                "its nextUpdate and not refreshed"
            )
    return found


def answer(found: list[str]) -> web.Response:
    """/readyz: 503 naming what fails readiness, else 200."""
    failing = [line for line in found if not line.startswith(DEGRADED)]
    if failing:
        return web.Response(status=503, text="\n".join(failing) + "\n")
    return web.Response(text="ready\n")


def health(found: list[str]) -> web.Response:
    """/healthz: 200 while the process runs; the body says what is degraded or failing."""
    return web.Response(text="".join(f"{line}\n" for line in ["ok", *found]))
