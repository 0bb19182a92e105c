"""``hsm-ocsp check``: is this configuration ready to serve?

For every CA: the key is on the token and signs; the certificate that will
sign responses belongs to that key; a delegated responder certificate is
issued by the CA, has EKU OCSPSigning and id-pkix-ocsp-nocheck, and is valid
now (a warning 30 days before it expires); the key is sensitive and not
extractable (a warning otherwise); the index parses. One line per finding,
``ok``, ``warning`` or ``error``; exit 1 when there is an error. The PIN is
read once and never printed (``Token`` and its errors never show it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator

from cryptography import x509

from ..config.file import load_config
from ..config.model import CAConfig, Config, CrlConfig, in_use
from ..config.pin import read_pin
from ..core.errors import IndexFormatError, TokenError
from ..core.index import parse_index
from ..core.responder_profile import Level, profile_findings
from ..core.signing import SchemeKind
from ..pkcs11.token import Token
from ..pkcs11.token_info import SessionLimits
from ..server.crl_source import CrlSource
from ..server.key_set import PROBE, SigningKey, proves, signing_keys

__all__ = ["EXPIRY_WARNING", "Finding", "check_config", "run_check"]

EXPIRY_WARNING = dt.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class Finding:
    level: Level
    ca: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<7} ca {self.ca}: {self.message}"


def _check_key(
    ca: CAConfig, module: str, pin: str, sign_timeout: float, sessions: int = 1
) -> Iterator[Finding]:
    keys = signing_keys(ca)
    for number, key in enumerate(keys):
        yield from _check_one_key(
            key,
            module,
            pin,
            sign_timeout,
            alone=len(keys) == 1,
            sessions=sessions if number == 0 else None,
        )


def _session_findings(ca: str, limits: SessionLimits | None, sessions: int) -> Iterator[Finding]:
    """The token's session limits against token.sessions (the most the host opens)."""
    if limits is None:
        yield Finding(Level.NOTE, ca, "the token does not say how many sessions it allows")
        return
    most, read_write = limits
    said = (
        f"{'no limit' if most is None else most} sessions, "
        f"{'no limit' if read_write is None else read_write} read/write"
    )
    bound = min((n for n in (most, read_write) if n is not None), default=None)
    if bound is not None and sessions > bound:
        yield Finding(
            Level.WARNING,
            ca,
            f"the token allows {said}, fewer than token.sessions "
            f"= {sessions}: lower token.sessions",
        )
    else:
        yield Finding(Level.OK, ca, f"the token allows {said}; token.sessions = {sessions}")


def _check_one_key(
    key: SigningKey,
    module: str,
    pin: str,
    sign_timeout: float,
    *,
    alone: bool,
    sessions: int | None = None,
) -> Iterator[Finding]:
    ca, spec, path = key.ca, key.spec, key.certificate_path
    which = "responder certificate" if ca.responder_certificate else "CA certificate"
    named = f"key {ca.key}"
    token = Token(module, pin, [spec], sign_timeout=sign_timeout)
    try:
        try:
            token.open_blocking()
        except TokenError as exc:
            yield Finding(Level.ERROR, ca.name, f"{named}: {exc} for {path}")
            return
        label = token.key_label_blocking(spec.name)
        if ca.key.object is not None and label != ca.key.object:
            named = f"the key of {path} (label {label!r})"
            if alone:  # in a rollover the next key is found by its certificate, as meant
                yield Finding(
                    Level.WARNING,
                    ca.name,
                    f"key {ca.key} is not the key of {path}; that one is on the token as "
                    f"{label!r} and signs: point key= at it",
                )
        yield Finding(Level.OK, ca.name, f"{named} found")
        if sessions is not None:
            limits = token.session_limits_blocking(spec.name)
            yield from _session_findings(ca.name, limits, sessions)
        attributes = token.key_attributes_blocking(spec.name)
        if attributes.get("always_authenticate"):
            yield Finding(
                Level.ERROR,
                ca.name,
                f"{named} needs a login before every signature "
                "(CKA_ALWAYS_AUTHENTICATE), which hsm-ocsp does not do: make the "
                "responder key without it",
            )
            return
        try:
            signature = token.sign_blocking(spec.name, PROBE)
        except TokenError as exc:
            yield Finding(
                Level.ERROR,
                ca.name,
                f"{named} cannot sign as {spec.scheme.kind} ({exc}); "
                f"is {path} the certificate of this key?",
            )
            return
        if proves(key, signature):
            yield Finding(Level.OK, ca.name, f"key signs and matches {which} {path}")
        else:
            yield Finding(
                Level.ERROR, ca.name, f"{which} {path} does not match {named} (wrong key)"
            )
        yield from _attribute_findings(ca.name, named, attributes)
    finally:
        token.close()


def _attribute_findings(ca: str, named: str, attributes: dict[str, object]) -> Iterator[Finding]:
    """What the key's attributes say: it must stay on the token."""
    if attributes.get("extractable") is not False:
        yield Finding(Level.WARNING, ca, f"{named} is extractable: it can leave the token")
    if attributes.get("sensitive") is not True:
        yield Finding(Level.WARNING, ca, f"{named} is not sensitive: its value can be read")
    if attributes.get("extractable") is False and attributes.get("sensitive") is True:
        yield Finding(Level.OK, ca, "key is sensitive and not extractable")


def _not_valid(cert: x509.Certificate, now: dt.datetime) -> str | None:
    """Why ``cert`` is not valid at ``now``; None when it is."""
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now >= cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _check_validity(ca: CAConfig, now: dt.datetime, warn_days: int) -> Iterator[Finding]:
    """The certificate in use now, the next one, and the days left (rollover)."""
    certs = list(ca.responder_certificates) or [(ca.certificate_path, ca.certificate)]
    which = "responder certificate" if ca.responder_certificates else "CA certificate"
    path, cert = in_use(certs, now)
    not_after = cert.not_valid_after_utc
    invalid = _not_valid(cert, now)
    if invalid is not None:
        yield Finding(Level.ERROR, ca.name, f"{which} {path} {invalid}")
        return
    days = (not_after - now).days
    yield Finding(
        Level.OK,
        ca.name,
        f"{which} in use: {path}, valid until {not_after:%Y-%m-%d} UTC ({days} days)",
    )
    ahead = sorted(
        (c for c in certs if c[1].not_valid_before_utc > now),
        key=lambda c: c[1].not_valid_before_utc,
    )
    covered = False
    for next_path, next_cert in ahead[:1]:
        start = next_cert.not_valid_before_utc
        covered = start <= not_after
        level = Level.OK if covered else Level.WARNING
        gap = "" if covered else f" (a gap: {path} expires before)"
        yield Finding(
            level,
            ca.name,
            f"next {which} {next_path} takes over {start:%Y-%m-%d %H:%M} UTC{gap}",
        )
    if days < warn_days and not covered:
        yield Finding(
            Level.WARNING,
            ca.name,
            f"{which} {path} expires in {days} days ({not_after:%Y-%m-%d %H:%M} UTC) and no "
            "next one is installed: renew it (docs/operators-guide.md, rollover)",
        )


def _check_own_key(ca: CAConfig) -> Iterator[Finding]:
    """A CA that signs its answers with its own key: what including its certificate in
    them (or not) means for the clients measured (tests/test_eap_tls.py, test_interop)."""
    if ca.responder_certificate is not None:
        return
    root = ca.certificate.issuer == ca.certificate.subject
    if ca.includes_ca_certificate:
        go = (
            "Go's x/crypto/ocsp accepts it (a root's own certificate)"
            if root
            else (
                "Go's x/crypto/ocsp refuses them (the certificate in an answer must be one the "
                "issuer signed, and an intermediate's was signed by its root)"
            )
        )
        said = (
            "answers carry the CA's own certificate: FreeRADIUS (EAP-TLS) and GnuTLS find "
            f"the signer; {go}"
        )
    else:
        said = (
            "answers carry no certificate: FreeRADIUS (EAP-TLS) and GnuTLS refuse them "
            "('signer certificate not found'); openssl and Go accept them"
        )
    yield Finding(
        Level.NOTE,
        ca.name,
        f"{said} (ca.include_ca_certificate); a delegated responder certificate "
        "(responder_certificate) suits every client",
    )


def _check_delegated(ca: CAConfig) -> Iterator[Finding]:
    cert = ca.responder_certificate
    if cert is None:
        return
    for found in profile_findings(cert, ca.certificate):
        yield Finding(
            found.level,
            ca.name,
            f"responder certificate {found.message}"
            if found.level is Level.OK
            else f"responder certificate {ca.responder_certificate_path} {found.message}",
        )


BR_SHORTEST = dt.timedelta(hours=8)
BR_LONGEST = dt.timedelta(days=10)


def _check_validity_window(ca: CAConfig) -> Iterator[Finding]:
    """Rule 28: nextUpdate - thisUpdate, counted inclusively (+1 s), in 8 h .. 10 days."""
    counted = ca.validity + dt.timedelta(seconds=1)
    if BR_SHORTEST <= counted <= BR_LONGEST:
        yield Finding(
            Level.OK, ca.name, f"validity {ca.validity} is within the BR's 8 h to 10 days"
        )
        return
    yield Finding(
        Level.WARNING,
        ca.name,
        f"validity {ca.validity} is outside 8 hours to 10 days (CA/B Baseline Requirements "
        "4.9.10; they bind publicly trusted CAs only)",
    )


def _check_algorithm_reach(ca: CAConfig) -> Iterator[Finding]:
    kind = ca.signature_scheme.kind
    if kind in (SchemeKind.EDDSA, SchemeKind.RSA_PSS):
        name = "Ed25519" if kind is SchemeKind.EDDSA else "RSA-PSS"
        nss = "; NSS before 3.99 cannot verify Ed25519 either" if kind is SchemeKind.EDDSA else ""
        yield Finding(
            Level.NOTE,
            ca.name,
            f"answers are signed with {name}: Go's x/crypto/ocsp (and so Caddy/certmagic, "
            f"cfssl, Vault) cannot verify them{nss}; ECDSA or RSA PKCS#1 reach every client",
        )


def _check_index(ca: CAConfig) -> Iterator[Finding]:
    if ca.crl is not None:
        yield from _check_crl(ca, ca.crl)
        return
    try:
        snapshot = parse_index(ca.index.read_bytes(), ca.index)
    except OSError as exc:
        yield Finding(Level.ERROR, ca.name, f"index {ca.index}: cannot read: {exc.strerror}")
    except IndexFormatError as exc:
        yield Finding(Level.ERROR, ca.name, f"index {exc}")
    else:
        yield Finding(
            Level.OK, ca.name, f"index {ca.index} parses ({len(snapshot.entries)} entries)"
        )


def _check_crl(ca: CAConfig, crl: CrlConfig) -> Iterator[Finding]:
    """The CA's CRLs fetched and judged as serve would, and its good/unknown mode said."""
    if crl.issued is not None:
        mode = f"a serial not on its CRL is good if {crl.issued} shows it issued, else unknown"
    else:
        mode = (
            'a serial not on its CRL is answered good, issued or not (not_on_crl = "good"; '
            "the CA/B Forum's rules say a responder SHOULD NOT answer good for a serial "
            "never issued)"
        )
    yield Finding(Level.NOTE if crl.issued is None else Level.OK, ca.name, mode)
    source = CrlSource(ca, crl)
    quiet = logging.getLogger("hsm_ocsp.crl")  # its failures are findings here
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        snapshot = source.load()
    except IndexFormatError as exc:
        yield Finding(Level.ERROR, ca.name, f"CRL {exc}")
        return
    finally:
        quiet.setLevel(level)
        source.close()
    until = source.valid_until
    yield Finding(
        Level.OK,
        ca.name,
        f"CRL {source.number} taken from {', '.join(crl.fulls)}: "
        f"{snapshot.counts['R']} revoked, nextUpdate "
        f"{'none' if until is None else f'{until:%Y-%m-%d %H:%M:%S}Z'}",
    )
    if source.last_error is not None:
        yield Finding(Level.WARNING, ca.name, source.last_error)


def check_config(
    config: Config, *, now: dt.datetime | None = None, warn_days: int = EXPIRY_WARNING.days
) -> list[Finding]:
    """Every finding for every CA, in config order."""
    now = now or dt.datetime.now(dt.UTC)
    pin = read_pin(config.token, config.path) if config.signing else ""
    findings: list[Finding] = []
    for ca in config.cas:  # an edge has no key and no index to check
        if config.signing:
            findings += _check_key(
                ca, config.token.module, pin, config.token.sign_timeout, config.token.sessions
            )
        findings += _check_delegated(ca)
        findings += _check_own_key(ca)
        findings += _check_validity(ca, now, warn_days)
        findings += _check_validity_window(ca)
        findings += _check_algorithm_reach(ca)
        if config.signing:
            findings += _check_index(ca)
    return findings


def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    findings = check_config(config, warn_days=args.warn_days)
    for finding in findings:
        print(finding)
    errors = sum(f.level is Level.ERROR for f in findings)
    warnings = sum(f.level is Level.WARNING for f in findings)
    print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
