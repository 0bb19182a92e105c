"""``hsm-ocsp revocations``: the revocations this host remembers (store/ledger.py).

``list`` prints them; ``forget`` is the operator's explicit word that a serial's
revocation is no longer to be remembered (a certificate revoked by mistake and
restored in the index). It is written to the ledger and logged here; ``serve`` takes it
up at its next SIGHUP or start, and then answers what the index says."""

from __future__ import annotations

import argparse
import datetime as dt
import logging

from ..config.file import load_config
from ..config.model import Config
from ..core.errors import EXIT_OK, ConfigError
from ..store.ledger import LEDGER_NAME, Ledger

__all__ = ["run_revocations"]

log = logging.getLogger("hsm_ocsp.index")


def _ledger(config: Config) -> Ledger:
    state_dir = config.server.state_dir
    if state_dir is None:
        raise ConfigError(
            config.path,
            "server.state_dir",
            "not set: revocations are remembered only in a state directory",
        )
    return Ledger(state_dir / LEDGER_NAME)


def run_revocations(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ledger = _ledger(config)
    names = [ca.name for ca in config.cas]
    if args.revocations_command == "list":
        for ca in names:
            for serial, revocation in sorted(ledger.held(ca).items()):
                reason = "-" if revocation.reason is None else revocation.reason.name
                when = revocation.revocation_time.astimezone(dt.UTC)
                print(f"{ca}\t{serial:X}\t{when:%Y-%m-%d %H:%M:%S}Z\t{reason}")
        return EXIT_OK
    if args.ca not in names:
        raise ConfigError(config.path, "ca", f"no [[ca]] named {args.ca!r}")
    try:
        serials = [int(text, 16) for text in args.serial]
    except ValueError:
        raise ConfigError(config.path, "--serial", "must be hexadecimal") from None
    held = ledger.held(args.ca)
    known = [s for s in serials if s in held]
    ledger.forget(args.ca, known)
    for serial in known:
        when = held[serial].revocation_time
        print(
            f"CA {args.ca}: serial {serial:X} (revoked {when:%Y-%m-%d}) forgotten; "
            "SIGHUP serve to take it up"
        )
    for serial in set(serials) - set(known):
        print(f"CA {args.ca}: serial {serial:X} was not remembered as revoked")
    return EXIT_OK
