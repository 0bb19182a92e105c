"""/healthz (the process answers) and /readyz (it can answer right now)."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from .app_state import CONFIG, SERVICE, SOURCES, TOKEN


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


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    problems = [
        f"index {name}: not loaded"
        for name, source in app[SOURCES].items()
        if source.snapshot is None
    ]
    problems += [
        f"index {name}: not taken up for {seconds:.0f} s ({app[SOURCES][name].last_error})"
        for name, seconds in stale_indexes(app).items()
    ]
    problems += [
        f"CA {name}: its signing certificate is not valid now (answers are tryLater)"
        for name in signers_out_of_validity(app)
    ]
    token = app[TOKEN]
    if not token.up:
        problems.append(f"token: {token.last_error or 'not connected'}")
    if problems:
        return web.Response(status=503, text="\n".join(problems) + "\n")
    return web.Response(text="ready\n")
