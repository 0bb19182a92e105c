"""The TOML configuration: read once, checked whole, frozen.

Every error names the file and the key (``ca[0].validity``), so an operator
can fix it without reading code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..core.errors import ConfigError
from ..core.index import DEFAULT_MAX_BYTES
from ..core.pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri
from ..core.signing import SignatureScheme, scheme_for_public_key

__all__ = [
    "CAConfig",
    "Config",
    "ServerConfig",
    "TokenConfig",
    "load_certificate",
    "load_config",
    "parse_duration",
    "read_pin",
]

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_PIN_ENV = "HSM_OCSP_PIN"
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    workers: int = 1
    metrics_listen: tuple[str, int] | None = None
    max_request_bytes: int = 10 * 1024
    max_cert_ids: int = 64
    log_format: str = "text"
    nonce: str = "echo"
    cache_entries: int = 100_000
    cache_bytes: int = 64 << 20
    max_pending_signatures: int = 256
    read_timeout: float = 10.0
    index_stale_after: float = 60.0
    max_connections: int | None = None  # None: the descriptor limit less a reserve
    drain_timeout: float = 5.0


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    module: str = DEFAULT_MODULE
    pin_env: str | None = DEFAULT_PIN_ENV
    pin_file: Path | None = None
    sign_timeout: float = 5.0


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
    rsa_padding: str = "pkcs1"
    unknown_serials: str = "unknown"
    max_index_bytes: int = DEFAULT_MAX_BYTES

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


def parse_duration(text: str) -> dt.timedelta:
    """``"90s"``, ``"30m"``, ``"1h30m"``, ``"7d"`` -> timedelta; ValueError if not."""
    cleaned = text.strip()
    if not cleaned or _DURATION.sub("", cleaned) != "":
        raise ValueError(f"{text!r} is not a duration like 30m, 1h or 7d")
    seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(cleaned))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return dt.timedelta(seconds=seconds)


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM or DER certificate; OSError or ValueError if not possible."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def read_pin(token: TokenConfig, config_path: object = "<config>") -> str:
    """The user PIN, from the file or the environment variable the config names.

    The PIN is never put into an error message.
    """
    if token.pin_file is not None:
        try:
            info = token.pin_file.stat()
        except OSError as exc:
            raise ConfigError(
                config_path, "token.pin_file", f"cannot read {token.pin_file}: {exc.strerror}"
            ) from None
        if info.st_mode & stat.S_IROTH:
            raise ConfigError(
                config_path,
                "token.pin_file",
                f"{token.pin_file} is readable by everyone; chmod o-rwx it",
            )
        try:
            pin = token.pin_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            raise ConfigError(
                config_path, "token.pin_file", f"cannot read {token.pin_file}"
            ) from None
        if not pin:
            raise ConfigError(config_path, "token.pin_file", f"{token.pin_file} is empty")
        return pin
    env = token.pin_env or DEFAULT_PIN_ENV
    env_pin = os.environ.get(env)
    if not env_pin:
        raise ConfigError(config_path, "token.pin_env", f"environment variable {env} is not set")
    return env_pin


class _Section:
    """Typed reads of one TOML table that name the key in every error."""

    def __init__(self, path: Path, prefix: str, table: object, known: set[str]) -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(table, Mapping):
            raise ConfigError(path, prefix, "must be a table")
        self.table: Mapping[str, Any] = table
        for key in table:
            if key not in known:
                raise ConfigError(path, self.key(key), "unknown key")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def get(self, name: str, kind: type, default: Any = None) -> Any:
        value = self.table.get(name, default)
        if value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"must be a {kind.__name__}")
        return value

    def required(self, name: str, kind: type) -> Any:
        if name not in self.table:
            raise self.error(name, "is required")
        return self.get(name, kind)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}")
        return value

    def positive(self, name: str, default: int) -> int:
        value: int = self.get(name, int, default)
        if value < 1:
            raise self.error(name, "must be 1 or more")
        return value

    def duration(self, name: str, default: str) -> dt.timedelta:
        try:
            return parse_duration(self.get(name, str, default))
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def file(self, name: str, *, required: bool = True) -> Path | None:
        raw = self.required(name, str) if required else self.get(name, str)
        if raw is None:
            return None
        path = Path(raw)
        if not path.is_absolute():
            path = self.path.parent / path
        if not path.is_file():
            raise self.error(name, f"file {path} does not exist")
        return path

    def responder_certificates(self, name: str) -> tuple[tuple[Path, x509.Certificate], ...]:
        """A file, a list of files or a directory of them (*.pem, *.crt, *.der): every
        responder certificate, the next one installed ahead included (of the same key or
        of a new one on the same token)."""
        raw = self.table.get(name)
        if raw is None:
            return ()
        names = raw if isinstance(raw, list) else [raw]
        if not names or not all(isinstance(n, str) for n in names):
            raise self.error(name, "must be a file name, a list of them or a directory")
        paths: list[Path] = []
        for text in names:
            path = Path(text) if Path(text).is_absolute() else self.path.parent / text
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt", ".der"))
                if not found:
                    raise self.error(name, f"directory {path} holds no .pem, .crt or .der")
                paths += found
            elif path.is_file():
                paths.append(path)
            else:
                raise self.error(name, f"file {path} does not exist")
        certs = []
        for path in paths:
            try:
                certs.append((path, load_certificate(path)))
            except (OSError, ValueError) as exc:
                raise self.error(name, f"{path} is not a PEM or DER certificate ({exc})") from None
        return tuple(certs)

    def certificate(self, name: str, *, required: bool = True) -> tuple[Path | None, Any]:
        path = self.file(name, required=required)
        if path is None:
            return None, None
        try:
            return path, load_certificate(path)
        except (OSError, ValueError) as exc:
            raise self.error(name, f"{path} is not a PEM or DER certificate ({exc})") from None


def _host_port(section: _Section, name: str, default: str | None) -> tuple[str, int] | None:
    raw = section.get(name, str, default)
    if raw is None:
        return None
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise section.error(name, f"{raw!r} is not host:port")
    return host, int(port)


def in_use(
    certs: Sequence[tuple[Path, x509.Certificate]], now: dt.datetime | None = None
) -> tuple[Path, x509.Certificate]:
    """The certificate that signs at ``now``: the valid one with the latest notBefore
    (else, none being valid, the one with the latest notBefore)."""
    now = now or dt.datetime.now(dt.UTC)
    valid = [c for c in certs if c[1].not_valid_before_utc <= now < c[1].not_valid_after_utc]
    return max(valid or certs, key=lambda c: c[1].not_valid_before_utc)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the whole configuration; ConfigError names file and key."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(file, "(file)", f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "(file)", f"not valid TOML: {exc}") from None
    _Section(file, "", data, {"server", "token", "ca"})

    server = _Section(
        file,
        "server",
        data.get("server", {}),
        {f.name for f in dataclasses.fields(ServerConfig)} - {"listen_host", "listen_port"}
        | {"listen"},
    )
    listen = _host_port(server, "listen", "127.0.0.1:8080")
    assert listen is not None
    read_timeout = server.duration("read_timeout", "10s").total_seconds()
    server_config = ServerConfig(
        listen_host=listen[0],
        listen_port=listen[1],
        workers=server.positive("workers", 1),
        metrics_listen=_host_port(server, "metrics_listen", None),
        max_request_bytes=server.positive("max_request_bytes", 10 * 1024),
        max_cert_ids=server.positive("max_cert_ids", 64),
        log_format=server.choice("log_format", "text", ("text", "json")),
        nonce=server.choice("nonce", "echo", ("echo", "ignore")),
        cache_entries=server.positive("cache_entries", 100_000),
        cache_bytes=server.positive("cache_bytes", ServerConfig.cache_bytes),
        max_pending_signatures=server.positive("max_pending_signatures", 256),
        read_timeout=read_timeout,
        index_stale_after=server.duration("index_stale_after", "60s").total_seconds(),
        drain_timeout=server.duration("drain_timeout", "5s").total_seconds(),
        max_connections=(
            server.positive("max_connections", 1) if "max_connections" in server.table else None
        ),
    )

    token = _Section(
        file, "token", data.get("token", {}), {"module", "pin_env", "pin_file", "sign_timeout"}
    )
    if "pin_env" in token.table and "pin_file" in token.table:
        raise token.error("pin_file", "give pin_env or pin_file, not both")
    module = token.get("module", str, DEFAULT_MODULE)
    pin_file = token.get("pin_file", str)
    token_config = TokenConfig(
        module=module,
        pin_env=None if pin_file else token.get("pin_env", str, DEFAULT_PIN_ENV),
        pin_file=None if pin_file is None else (file.parent / pin_file),
        sign_timeout=token.duration("sign_timeout", "5s").total_seconds(),
    )

    raw_cas = data.get("ca")
    if not isinstance(raw_cas, list) or not raw_cas:
        raise ConfigError(file, "ca", "at least one [[ca]] table is required")
    cas = []
    names: set[str] = set()
    issuers: dict[tuple[bytes, bytes], int] = {}  # (subject, public key) -> [[ca]] index
    ca_keys = {
        "name",
        "certificate",
        "index",
        "responder_certificate",
        "key",
        "validity",
        "signature_hash",
        "rsa_padding",
        "unknown_serials",
        "max_index_bytes",
    }
    for i, raw in enumerate(raw_cas):
        ca = _Section(file, f"ca[{i}]", raw, ca_keys)
        name = ca.required("name", str)
        if not _CA_NAME.fullmatch(name) or name in ("healthz", "readyz", "metrics"):
            raise ca.error("name", f"{name!r}: use letters, digits, '-', '_', '.'")
        if name in names:
            raise ca.error("name", f"{name!r} is used by another [[ca]]")
        names.add(name)
        cert_path, cert = ca.certificate("certificate")
        responders = ca.responder_certificates("responder_certificate")
        resp_path, resp_cert = in_use(responders) if responders else (None, None)
        index = ca.file("index")
        assert cert_path is not None and index is not None
        issuer = (cert.subject.public_bytes(), _spki(cert))
        if issuer in issuers:  # one CertID, two indexes: which status would be the truth?
            raise ca.error(
                "certificate",
                f"{cert_path} is the issuer of ca[{issuers[issuer]}] too: "
                "serve each CA from one [[ca]] with its one index",
            )
        issuers[issuer] = i
        try:
            key = parse_pkcs11_uri(ca.required("key", str))
        except ValueError as exc:
            raise ca.error("key", str(exc)) from None
        ca_config = CAConfig(
            name=name,
            certificate_path=cert_path,
            certificate=cert,
            index=index,
            key=key,
            validity=ca.duration("validity", "1d"),
            responder_certificate_path=resp_path,
            responder_certificate=resp_cert,
            responder_certificates=responders,
            signature_hash=ca.choice("signature_hash", "sha256", ("sha256", "sha384", "sha512")),
            rsa_padding=ca.choice("rsa_padding", "pkcs1", ("pkcs1", "pss")),
            unknown_serials=ca.choice("unknown_serials", "unknown", ("unknown", "revoked")),
            max_index_bytes=ca.positive("max_index_bytes", DEFAULT_MAX_BYTES),
        )
        for path, certificate in ca_config.signing_certificates:
            try:
                ca_config.scheme_for(certificate)  # a key type we cannot sign with
            except ValueError as exc:
                raise ca.error(ca_config.signer_key, f"{path}: {exc}") from None
        cas.append(ca_config)
    return Config(path=file, server=server_config, token=token_config, cas=tuple(cas))
