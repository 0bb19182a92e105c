"""/healthz (the process answers) and /readyz (it can answer right now)."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from ..store.vouch import VOUCH_FOR
from .app_state import CONFIG, PRODUCER, PRODUCTION, SERVICE, SOURCES, TOKEN


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


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
        f"index {name}: not loaded"
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
    token = app[TOKEN]
    if not token.up:
        found.append(f"token: {token.last_error or 'not connected'}")
    return found + margins(app)


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
        margin = min(config.producer.min_margin, ca.validity / 4).total_seconds()
        if soonest is not None and soonest - now < margin:
            found.append(f"CA {ca.name}: a stored answer is {max(0, soonest - now):.0f} s from "
                         "its nextUpdate and not refreshed")  # fmt: skip
    return found


def _answer(found: list[str]) -> web.Response:
    if found:
        return web.Response(status=503, text="\n".join(found) + "\n")
    return web.Response(text="ready\n")


async def readyz(request: web.Request) -> web.Response:
    return _answer(problems(request.app))


async def front_readyz(request: web.Request) -> web.Response:
    """A worker of a producer: ready when the producer is."""
    return _answer(await request.app[PRODUCER].problems())
