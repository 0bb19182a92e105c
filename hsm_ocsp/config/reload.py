"""SIGHUP: read the configuration again and take what can change without a restart.

What a running responder takes: each CA's responder certificates (a renewed one,
or the next one installed ahead, of the same key or of a new key on the token),
its validity and its unknown_serials rule. A new key is found on the token and
proven (it signs, and the signature verifies against its certificate) before the
reload is taken; if that fails the reload is refused (see key_set.py).
Anything else (listeners, workers, the token, a CA's key, index or certificate,
CAs added or removed) needs a restart: the reload is then refused and says what
changed. A configuration that does not load, or a certificate every answer would
fail with, is refused with the one line that names the file and the key; the
running configuration stays in every case.
"""

from __future__ import annotations

import dataclasses
import logging

from ..core.errors import ConfigError
from ..core.responder_profile import blocking
from .file import load_config
from .model import CAConfig, Config

__all__ = ["changes_needing_restart", "read_reloadable", "unservable"]

log = logging.getLogger("hsm_ocsp.reload")

# CAConfig fields a reload may change; every other one needs a restart.
RELOADABLE = {
    "responder_certificate_path",
    "responder_certificate",
    "responder_certificates",
    "validity",
    "unknown_serials",
}


def _fixed(ca: CAConfig) -> dict[str, object]:
    values = {f.name: getattr(ca, f.name) for f in dataclasses.fields(ca)}
    return {k: v for k, v in values.items() if k not in RELOADABLE}


def changes_needing_restart(running: Config, new: Config) -> list[str]:
    """The keys whose change a reload cannot take, named as in the file."""
    sections = ("server", "token", "producer", "store")  # the producer and store start once
    changed = [name for name in sections if getattr(running, name) != getattr(new, name)]
    if [ca.name for ca in running.cas] != [ca.name for ca in new.cas]:
        return [*changed, "the list of [[ca]]"]
    for number, (old, ca) in enumerate(zip(running.cas, new.cas, strict=True)):
        changed += [f"ca[{number}].{k}" for k, v in _fixed(ca).items() if _fixed(old)[k] != v]
    return changed


def read_reloadable(
    running: Config, *, quiet: bool = False, text: str | None = None
) -> Config | None:
    """The configuration file as it is now (or ``text``, its content as the supervisor
    read it), if a running responder can take it; else None, after one log line that
    says why (at debug level when ``quiet``: with several workers the parent says it)."""
    level = logging.DEBUG if quiet else logging.ERROR
    try:
        new = load_config(running.path, text)
    except ConfigError as exc:
        log.log(level, "reload refused, the running configuration stays: %s", exc)
        return None
    if new.server.state_dir is None:  # the private directory serve made stays in use
        server = dataclasses.replace(new.server, state_dir=running.server.state_dir)
        new = dataclasses.replace(new, server=server)
    changed = changes_needing_restart(running, new)
    if changed:
        log.log(
            level,
            "reload refused, the running configuration stays: %s: %s changed, which needs "
            "a restart",
            running.path,
            ", ".join(changed),
        )
        return None
    problems = unservable(new)
    if problems:
        log.log(level, "reload refused, the running configuration stays: %s", problems[0])
        return None
    return new


def unservable(config: Config) -> list[str]:
    """Responder certificates every answer would fail validation with, one line each,
    naming the file and the key: serve does not start, a reload is refused."""
    return [
        f"{config.path}: ca[{number}].responder_certificate: {path} {problem}"
        for number, ca in enumerate(config.cas)
        for path, cert in ca.responder_certificates
        for problem in blocking(cert, ca.certificate)
    ]
