"""Which token keys a configuration signs with, and the proof that each is the key
of its certificate.

Each certificate that may sign for a CA signs with its own key: the private key
the CA's ``key`` URI names if that is the certificate's key, else the one found on
the URI's token by the certificate's public key. So ``hsm-ocsp keygen`` makes the
next key under a new label, and its certificate, dropped beside the old one, brings
it in on the next reload, without a restart (and without a new ``key=``).

Before a key signs an answer it signs a probe that must verify against its
certificate: at start-up (a wrong key stops ``serve``) and at a reload that brings
a key in (a wrong or missing key refuses the reload, and the running keys stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ..config.model import CAConfig, Config
from ..core.errors import TokenError
from ..core.responder import key_names, spki
from ..core.signing import verify
from ..pkcs11.key_lookup import KeySpec
from ..pkcs11.login_gate import LoginGate
from ..pkcs11.signer_process import TokenProcess
from ..pkcs11.token_pool import TokenPool

__all__ = [
    "PROBE",
    "ProvenKeys",
    "SigningKey",
    "key_specs",
    "keys_changed",
    "prove_keys",
    "prove_new_keys",
    "proves",
    "signing_keys",
    "take_keys",
]

log = logging.getLogger("hsm_ocsp.token")
PROBE = b"hsm-ocsp key check"  # what a key signs to prove itself
STARTUP_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """A token key of a CA and one certificate of it (to prove the key against)."""

    ca: CAConfig
    spec: KeySpec
    certificate_path: Path
    certificate: x509.Certificate


def proves(key: SigningKey, signature: bytes) -> bool:
    """Whether ``signature`` of PROBE verifies against the key's certificate: the token
    key is the certificate's (start-up, reload and ``check`` all ask this)."""
    try:
        verify(key.certificate.public_key(), key.spec.scheme, PROBE, signature)
    except InvalidSignature:
        return False
    return True


def signing_keys(ca: CAConfig) -> list[SigningKey]:
    """The CA's token keys, one for each public key among its signing certificates
    that have not expired (an expired one never signs again, so its key may already
    be gone from the token); all of them if every one has expired."""
    now = dt.datetime.now(dt.UTC)
    live = [(p, c) for p, c in ca.signing_certificates if c.not_valid_after_utc > now]
    certificates = live or list(ca.signing_certificates)
    names = key_names(ca.name, [cert for _, cert in certificates])
    keys: dict[str, SigningKey] = {}
    for path, cert in certificates:
        public_key = spki(cert)
        name = names[public_key]
        if name not in keys:
            spec = KeySpec(name, ca.key, ca.scheme_for(cert), public_key)
            keys[name] = SigningKey(ca, spec, path, cert)
    return list(keys.values())


def key_specs(config: Config) -> list[KeySpec]:
    return [key.spec for ca in config.cas for key in signing_keys(ca)]


async def _open(token: TokenProcess | TokenPool, attempts: int = STARTUP_ATTEMPTS) -> None:
    """Open the token; a passing fault (a network HSM slow to answer) is tried again a
    few times, a wrong PIN or a missing key not."""
    for attempt in range(attempts):
        try:
            await token.open()
            return
        except TokenError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            log.warning("token not ready (%s); trying again", exc)
            await asyncio.sleep(0.5 * (attempt + 1))


async def _prove(token: TokenProcess | TokenPool, key: SigningKey) -> None:
    if not proves(key, await token.sign(key.spec.name, PROBE)):
        raise TokenError(
            f"CA {key.ca.name}: key {key.ca.key} does not belong to {key.ca.signer_key} "
            f"{key.certificate_path}",
            retryable=False,
        ) from None


async def prove_keys(
    token: TokenProcess | TokenPool, config: Config, attempts: int = STARTUP_ATTEMPTS
) -> None:
    """Open the token, then sign a probe with every key and verify it against its
    certificate; TokenError says what failed."""
    await _open(token, attempts)
    for ca in config.cas:
        for key in signing_keys(ca):
            await _prove(token, key)


class ProvenKeys:
    """The token as answers are signed with it: not one signature before every key of
    the configuration has signed a probe that verifies against its certificate. A
    producer that starts while the token is away serves its store (and withdraws what
    the indexes change) at once, and proves the keys once the token is back."""

    def __init__(self, token: TokenProcess | TokenPool) -> None:
        self.token = token
        self.proven = False

    def algorithm_identifier(self, name: str) -> bytes:
        return self.token.algorithm_identifier(name)

    async def sign(self, name: str, data: bytes) -> bytes:
        if not self.proven:
            raise TokenError("the keys are not proven yet: the token was away at start")
        return await self.token.sign(name, data)

    async def prove(self, config: Config, *, attempts: int = STARTUP_ATTEMPTS) -> None:
        """Prove the keys now; TokenError (retryable or not) says why not."""
        await prove_keys(self.token, config, attempts)
        self.proven = True


def _where(config: Config, key: SigningKey) -> str:
    number = config.cas.index(key.ca)
    return f"{config.path}: ca[{number}].{key.ca.signer_key}: {key.certificate_path}"


async def take_keys(
    token: TokenProcess | TokenPool, config: Config, *, proven: bool = False
) -> None:
    """Sign with ``config``'s keys from now on (a reload); nothing to do if they are
    the running ones. Each new key is found and proven first (``proven``: found only,
    the supervisor proved it on this token before it accepted the reload); TokenError
    naming the file and the key (and the running keys kept) if one is missing or does
    not fit its certificate."""
    running = dict(token.keys)
    keys = [key for ca in config.cas for key in signing_keys(ca)]
    if {k.spec.name: k.spec for k in keys} == running:
        return
    trial = dict(running)
    for key in keys:
        if running.get(key.spec.name) == key.spec:
            continue
        trial[key.spec.name] = key.spec
        try:
            await token.set_keys(list(trial.values()))
            if not proven:
                await _prove(token, key)
        except TokenError as exc:
            with contextlib.suppress(TokenError):  # a token gone keeps a superset: harmless
                await token.set_keys(list(running.values()))
            raise TokenError(f"{_where(config, key)}: {exc}", retryable=False) from None
    await token.set_keys([k.spec for k in keys])


def keys_changed(running: Config, new: Config) -> bool:
    return key_specs(running) != key_specs(new)


async def prove_new_keys(config: Config, pin: str, gate: LoginGate | None) -> None:
    """Prove ``config``'s keys in a signer of its own (the supervisor, before its
    workers are told to reload); TokenError naming the file if one fails."""
    token = TokenProcess(
        config.token.module, pin, [], gate=gate, sign_timeout=config.token.sign_timeout
    )
    try:
        await _open(token)
        await take_keys(token, config)
    finally:
        await token.aclose()
