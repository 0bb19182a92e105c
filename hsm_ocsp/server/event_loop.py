"""The event loop every serving process runs on (workers and the producer alike)."""

from __future__ import annotations

import asyncio
import logging
import os

__all__ = ["EVENT_LOOP_ENV", "new_event_loop"]

log = logging.getLogger("hsm_ocsp.serve")

EVENT_LOOP_ENV = "HSM_OCSP_EVENT_LOOP"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's (a dependency), or asyncio's where it is missing.

    uvloop answered a cached request with about 10 % less CPU than asyncio's
    own loop (wrk, 2 workers, 4 alternating pairs). ``HSM_OCSP_EVENT_LOOP=asyncio``
    asks for asyncio's loop: to compare (``benchmarks/run.py --loop asyncio``), or
    where uvloop misbehaves.
    """
    if os.environ.get(EVENT_LOOP_ENV) == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:  # e.g. a venv built with --no-deps on a host without it
        log.warning("uvloop is not installed; using asyncio's event loop")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
