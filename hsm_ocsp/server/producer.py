"""The host's producer process: the one process of several workers that opens the
token and reads the indexes. It answers the workers over the link (producer_link.py)
and keeps the store's answers current (production.py); it has no HTTP listener."""

from __future__ import annotations

import asyncio
import logging
import signal

from ..config.model import Config
from ..core.errors import EXIT_OK, HsmOcspError, exit_code
from ..pkcs11.login_gate import LoginGate
from .event_loop import new_event_loop
from .signing_host import SigningHost

__all__ = ["run_producer"]

log = logging.getLogger("hsm_ocsp.producer")


async def _produce(config: Config, pin: str, gate: LoginGate) -> None:
    host = SigningHost(config, pin=pin, login_gate=gate, handle_signals=True, link=True)
    await host.start()  # indexes read, keys proven, store reconciled, link open
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await host.close()


def run_producer(config: Config, *, pin: str, gate: LoginGate) -> int:
    """Run the producer until SIGTERM; the exit code says why it ended."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the host's handler is in
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_produce(config, pin, gate))
    except HsmOcspError as exc:
        log.error("producer cannot start: %s", exc)
        return exit_code(exc)
    return EXIT_OK
