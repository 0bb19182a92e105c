"""/healthz (the process answers) and /readyz (it can answer right now)."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from ..store.vouch import VOUCH_FOR
from .app_state import CONFIG, KEYS, PRODUCER, PRODUCTION, SERVICE, SOURCES, TOKEN
from .crl_source import CrlSource


def stale_indexes(app: web.Application) -> dict[str, float]:
    """CA name -> seconds its index file has not been taken up, past the bound."""
    bound = app[CONFIG].server.index_stale_after
    stale = {name: source.stale_for() for name, source in app[SOURCES].items()}
    return {name: seconds for name, seconds in stale.items() if seconds > bound}


def signers_out_of_validity(app: web.Application) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    return [issuer.name for issuer in app[SERVICE].issuers if not issuer.signer_valid_at(now)]


def problems(app: web.Application) -> list[str]:
    """What keeps the process that holds the token and indexes from answering now."""
    found = [
        f"status of CA {name} (its index or CRLs): not loaded"
        for name, source in app[SOURCES].items()
        if source.snapshot is None
    ]
    found += [
        f"index {name}: not taken up for {seconds:.0f} s ({app[SOURCES][name].last_error})"
        for name, seconds in stale_indexes(app).items()
    ]
    found += [
        f"index {name}: its file has not been looked at for over {VOUCH_FOR:.0f} s (a file "
        "system that does not answer?); its CA answers tryLater"
        for name, source in app[SOURCES].items()
        if source.snapshot is not None and not source.fresh(VOUCH_FOR)
    ]
    found += _crl_expired(app)
    found += [
        f"CA {name}: its signing certificate is not valid now (answers are tryLater)"
        for name in signers_out_of_validity(app)
    ]
    if PRODUCTION in app:
        found += [
            f"CA {ca.name}: {app[PRODUCTION].unwithdrawn(ca.name)} changed serials not yet "
            "withdrawn from the store (it cannot commit; tried again every second)"
            for ca in app[CONFIG].cas
            if app[PRODUCTION].unwithdrawn(ca.name)
        ]
    return found + margins(app) + _token(app)


def _crl_expired(app: web.Application) -> list[str]:
    """CAs whose CRLs are past their nextUpdate (by more than ca.crl_grace)."""
    found = []
    for ca in app[CONFIG].cas:
        source = app[SOURCES].get(ca.name)
        if ca.crl is None or not isinstance(source, CrlSource):
            continue
        late = source.expired_for()
        if late > 0:
            until = f"{source.valid_until:%Y-%m-%d %H:%M:%S}Z"
            line = (f"CA {ca.name}: its CRLs are past their nextUpdate {until} and no newer "
                    f"one was taken ({source.last_error}); answers that need a signature are "
                    "tryLater")  # fmt: skip
            found.append(line if late > ca.crl.grace.total_seconds() else DEGRADED + line)
    return found


def _token(app: web.Application) -> list[str]:
    """The token's state: a readiness problem only where answers depend on it. A host
    whose store holds a current answer for every serial of its CAs answers correctly
    without it (until the answers near their nextUpdate: ``margins``), so a token outage
    is then a degradation (``/healthz``, ``hsm_ocsp_token_up``), not unreadiness: else
    every instance leaves the load balancer at once, exactly when the store can serve."""
    token, keys = app[TOKEN], app[KEYS]
    found = []
    if not token.up:
        found.append(f"token: {token.last_error or 'not connected'}")
    elif not keys.proven:
        found.append("token: the keys are not proven yet")
    if token.gate is not None and (refused := token.gate.refused()) is not None:
        found.append(f"token: login refused ({refused}); fix the PIN, then SIGHUP")
    complete = PRODUCTION in app and all(
        app[PRODUCTION].complete.get(ca.name) for ca in app[CONFIG].cas
    )
    return [DEGRADED + line for line in found] if complete else found


DEGRADED = "degraded: "  # a line of /healthz that does not fail readiness


def margins(app: web.Application) -> list[str]:
    """CAs with a stored answer closer to its nextUpdate than producer.min_margin (or a
    quarter of the CA's validity, if less): its refresh did not come."""
    if PRODUCTION not in app:
        return []
    config = app[CONFIG]
    now = dt.datetime.now(dt.UTC).timestamp()
    found = []
    for ca in config.cas:
        soonest = app[PRODUCTION].soonest.get(ca.name)
        source = app.get(SOURCES, {}).get(ca.name)
        until = None if source is None or source.snapshot is None else source.snapshot.valid_until
        if soonest is not None and until is not None and soonest >= until.timestamp() - 1:
            continue  # as far as its CRLs allow: _crl_expired says when they run out
        margin = min(config.producer.min_margin, ca.validity / 4).total_seconds()
        if soonest is not None and soonest - now < margin:
            found.append(f"CA {ca.name}: a stored answer is {max(0, soonest - now):.0f} s from "
                         "its nextUpdate and not refreshed")  # fmt: skip
    return found


def _answer(found: list[str]) -> web.Response:
    failing = [line for line in found if not line.startswith(DEGRADED)]
    if failing:
        return web.Response(status=503, text="\n".join(failing) + "\n")
    return web.Response(text="ready\n")


def _health(found: list[str]) -> web.Response:
    """200 while the process runs; the body says what is degraded or failing."""
    return web.Response(text="".join(f"{line}\n" for line in ["ok", *found]))


async def readyz(request: web.Request) -> web.Response:
    return _answer(problems(request.app))


async def healthz(request: web.Request) -> web.Response:
    return _health(problems(request.app))


async def front_readyz(request: web.Request) -> web.Response:
    """A worker of a producer: ready when the producer is."""
    return _answer(await request.app[PRODUCER].problems())


async def front_healthz(request: web.Request) -> web.Response:
    return _health(await request.app[PRODUCER].problems())
