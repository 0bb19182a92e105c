"""What a configuration is, as the rest of the package sees it: typed, checked, with one
default per setting (the dataclass field's)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from ..core.index import DEFAULT_MAX_BYTES
from ..core.limits import LIMITS
from ..core.pkcs11_uri import Pkcs11Uri
from ..core.signing import RsaPadding, SignatureScheme, scheme_for_public_key

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_PIN_ENV = "HSM_OCSP_PIN"
DEFAULT_VALIDITY = dt.timedelta(days=1)  # ca.validity: within the BR's 8 h to 10 days


# The choices of the configuration, one enum each (they look alike by nature).
class LogFormat(enum.StrEnum):
    """``server.log_format``."""

    TEXT = "text"
    JSON = "json"


class NonceMode(enum.StrEnum):
    """``server.nonce``: echo a request's nonce (signing that answer live) or ignore it."""

    ECHO = "echo"
    IGNORE = "ignore"


class UnknownSerials(enum.StrEnum):
    """``ca.unknown_serials``: a serial the index lacks is unknown, or revoked (RFC 6960 2.2)."""

    UNKNOWN = "unknown"
    REVOKED = "revoked"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    workers: int = 1
    metrics_listen: tuple[str, int] | None = None
    max_request_bytes: int = 10 * 1024
    max_cert_ids: int = LIMITS.max_cert_ids
    log_format: LogFormat = LogFormat.TEXT
    nonce: NonceMode = NonceMode.ECHO
    cache_entries: int = LIMITS.cache_entries
    cache_bytes: int = LIMITS.cache_bytes
    max_pending_signatures: int = LIMITS.max_pending_signatures
    read_timeout: float = 10.0
    index_stale_after: float = 60.0
    max_connections: int | None = None  # None: the descriptor limit less a reserve
    drain_timeout: float = 5.0
    # Where the host's shared answers live (answers.lmdb); None: a private directory
    # serve makes for its run (shared by its workers, gone at exit).
    state_dir: Path | None = None


@dataclasses.dataclass(frozen=True)
class ProducerConfig:
    """[producer]: what the host's producer signs ahead of clients, and how fast."""

    pre_produce: bool = True  # keep a current answer for every serial of every index
    max_signatures_per_second: float = 0.0  # for pre-production; 0: as fast as it signs
    # /readyz fails while a stored answer is this close to its nextUpdate unrefreshed.
    min_margin: dt.timedelta = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """[audit]: a JSON line for every signature the token is asked to make."""

    path: Path | None = None  # none: no trail
    max_bytes: int = 100 << 20  # a file is renamed PATH.1 past this
    keep: int = 10  # old files kept
    required: bool = False  # true: no signature whose line cannot be written (tryLater)


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """[store]: where answers are shared beyond this host."""

    redis: str | None = None  # redis://host:port/db or unix:///path: the fleet's Redis


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    module: str = DEFAULT_MODULE
    pin_env: str | None = DEFAULT_PIN_ENV
    pin_file: Path | None = None
    sign_timeout: float = LIMITS.sign_timeout
    sessions: int = 1  # signer processes of the producer, each with a session (a login)
    # Seconds a session may stay unused before a cheap call keeps it open (tokens that
    # drop idle sessions: YubiHSM 2 after 30 s); 0: none.
    keepalive: float = 0.0


class NotOnCrl(enum.StrEnum):
    """``ca.not_on_crl``: a serial a CA's CRLs do not list, where ``issued`` cannot say
    whether the CA issued it: unknown (the default), or good as the operator says."""

    UNKNOWN = "unknown"
    GOOD = "good"


@dataclasses.dataclass(frozen=True)
class CrlConfig:
    """A CA's status from its CRLs (instead of an index)."""

    fulls: tuple[str, ...]  # files or http(s) URLs: the full CRL, or each partition
    deltas: tuple[str, ...] = ()
    issuer_path: Path | None = None  # ca.crl_issuer: a CRL issuer the CA delegated
    issuer: x509.Certificate | None = None
    issued: Path | None = None  # a directory of certificates or a file of serials
    not_on_crl: NotOnCrl = NotOnCrl.UNKNOWN
    fetch_interval: dt.timedelta = dt.timedelta(minutes=1)
    # /readyz fails once the CRLs in service are past their nextUpdate by more than this
    # (answers that need a signature are tryLater from nextUpdate on, whatever it is).
    grace: dt.timedelta = dt.timedelta(0)
    max_bytes: int = 512 << 20


@dataclasses.dataclass(frozen=True)
class CAConfig:
    name: str
    certificate_path: Path
    certificate: x509.Certificate
    index: Path
    key: Pkcs11Uri
    validity: dt.timedelta
    # The delegated responder certificate in use when the config was read (see
    # in_use), and all of them: the one that signs is chosen at each signature.
    responder_certificate_path: Path | None = None
    responder_certificate: x509.Certificate | None = None
    responder_certificates: tuple[tuple[Path, x509.Certificate], ...] = ()
    signature_hash: str = "sha256"
    rsa_padding: RsaPadding = RsaPadding.PKCS1
    unknown_serials: UnknownSerials = UnknownSerials.UNKNOWN
    max_index_bytes: int = DEFAULT_MAX_BYTES
    # The CertID hash algorithms answers are produced ahead for (the two clients send).
    cert_id_hashes: tuple[str, ...] = ("sha1", "sha256")
    # A CA that signs its own answers: put its certificate into them? None: when the CA
    # is a root (self-issued), which every client measured accepts (see issuers_of).
    include_ca_certificate: bool | None = None
    crl: CrlConfig | None = None  # status from CRLs; ``index`` is then not read

    @property
    def includes_ca_certificate(self) -> bool:
        """Whether answers signed with the CA's own key carry its certificate."""
        if self.include_ca_certificate is not None:
            return self.include_ca_certificate
        return self.certificate.issuer == self.certificate.subject

    @property
    def signer_certificate(self) -> x509.Certificate:
        """The certificate whose key signs this CA's responses."""
        return self.responder_certificate or self.certificate

    @property
    def signer_path(self) -> Path:
        return self.responder_certificate_path or self.certificate_path

    @property
    def signer_key(self) -> str:
        """The config key that names the signing certificate, for messages."""
        return "responder_certificate" if self.responder_certificate else "certificate"

    @property
    def signing_certificates(self) -> tuple[tuple[Path, x509.Certificate], ...]:
        """Every certificate that may sign this CA's answers: the responder
        certificates, or else the CA certificate."""
        return self.responder_certificates or ((self.certificate_path, self.certificate),)

    @functools.cached_property
    def signature_scheme(self) -> SignatureScheme:
        """How the key of the certificate in use signs (ValueError for a key type we
        cannot use)."""
        return self.scheme_for(self.signer_certificate)

    def scheme_for(self, certificate: x509.Certificate) -> SignatureScheme:
        """How the key of ``certificate`` signs (ValueError for a key type we cannot use)."""
        return scheme_for_public_key(
            certificate.public_key(),
            signature_hash=self.signature_hash,
            rsa_padding=self.rsa_padding,
        )


@dataclasses.dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    token: TokenConfig
    cas: tuple[CAConfig, ...]
    producer: ProducerConfig = ProducerConfig()
    store: StoreConfig = StoreConfig()
    audit: AuditConfig = AuditConfig()
    # False: no [token] table, an edge of a fleet (it serves answers copied from Redis)
    signing: bool = True

    @property
    def edge(self) -> bool:
        return not self.signing


def in_use(
    certs: Sequence[tuple[Path, x509.Certificate]], now: dt.datetime | None = None
) -> tuple[Path, x509.Certificate]:
    """The certificate that signs at ``now``: the valid one with the latest notBefore
    (else, none being valid, the one with the latest notBefore)."""
    now = now or dt.datetime.now(dt.UTC)
    valid = [c for c in certs if c[1].not_valid_before_utc <= now < c[1].not_valid_after_utc]
    return max(valid or certs, key=lambda c: c[1].not_valid_before_utc)
