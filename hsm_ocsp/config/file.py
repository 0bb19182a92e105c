"""The TOML configuration: read once, checked whole, frozen.

Every error names the file and the key (``ca[0].validity``), so an operator
can fix it without reading code.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ..core.errors import ConfigError
from ..core.pkcs11_uri import parse_pkcs11_uri
from ..core.responder import spki
from .crl_keys import CRL_KEYS, crl_config
from .model import (
    DEFAULT_VALIDITY,
    AuditConfig,
    CAConfig,
    Config,
    ProducerConfig,
    ServerConfig,
    StoreConfig,
    TokenConfig,
    in_use,
)
from .section import Section, host_port, read_toml

__all__ = ["load_config"]

_NO_KEY = "pkcs11:object=none"  # an edge's CA: no key is ever looked for,
_NO_INDEX = Path(os.devnull)  # and no index read (its producer copies answers from Redis)
_CA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def load_config(path: str | os.PathLike[str], text: str | None = None) -> Config:
    """Read and check the whole configuration; ConfigError names file and key.
    ``text``: the file's content as read before (a reload the supervisor accepted),
    parsed as if read from ``path`` now."""
    file = Path(path)
    data = read_toml(file, text)
    Section(file, "", data, {"server", "token", "ca", "producer", "store", "audit"})
    store = _store(Section(file, "store", data.get("store", {}), {"redis"}))
    # No [token] table: its defaults, or, in a fleet (a Redis), an edge without a token.
    signing = "token" in data or store.redis is None
    return Config(
        path=file,
        server=_server(Section(file, "server", data.get("server", {}), _SERVER_KEYS)),
        token=_token(Section(file, "token", data.get("token", {}), _TOKEN_KEYS)),
        cas=_cas(file, data.get("ca"), signing),
        producer=_producer(Section(file, "producer", data.get("producer", {}), _PRODUCER_KEYS)),
        store=store,
        signing=signing,
        audit=_audit(Section(file, "audit", data.get("audit", {}), _AUDIT_KEYS)),
    )


_AUDIT_KEYS = {"path", "max_bytes", "keep", "required"}


def _audit(audit: Section) -> AuditConfig:
    raw = audit.get("path", str)
    path = (
        None if raw is None else (Path(raw) if Path(raw).is_absolute() else audit.path.parent / raw)
    )
    keep: int = audit.get("keep", int, AuditConfig.keep)
    if keep < 0:
        raise audit.error("keep", "must be 0 or more")
    return AuditConfig(
        path=path,
        max_bytes=audit.positive("max_bytes", AuditConfig.max_bytes),
        keep=keep,
        required=audit.get("required", bool, AuditConfig.required),
    )


def _store(store: Section) -> StoreConfig:
    url = store.get("redis", str)
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise store.error("redis", "must be a redis://, rediss:// or unix:// URL")
    return StoreConfig(redis=url)


_SERVER_KEYS = {f.name for f in dataclasses.fields(ServerConfig)} - {"listen_host", "listen_port"}
_SERVER_KEYS |= {"listen"}
_TOKEN_KEYS = {"module", "pin_env", "pin_file", "sign_timeout", "sessions", "keepalive"}
_PRODUCER_KEYS = {f.name for f in dataclasses.fields(ProducerConfig)}
_CERT_ID_HASHES = ("sha1", "sha256", "sha384", "sha512")
_CA_KEYS = {
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
    "cert_id_hashes",
    "include_ca_certificate",
} | CRL_KEYS
_SERVER = ServerConfig()  # every [server] default, once
_TOKEN = TokenConfig()
_PRODUCER = ProducerConfig()


def _producer(producer: Section) -> ProducerConfig:
    rate = producer.get("max_signatures_per_second", float, _PRODUCER.max_signatures_per_second)
    if rate < 0:
        raise producer.error("max_signatures_per_second", "must be 0 (no limit) or more")
    return ProducerConfig(
        pre_produce=producer.get("pre_produce", bool, _PRODUCER.pre_produce),
        max_signatures_per_second=rate,
        min_margin=producer.duration("min_margin", _PRODUCER.min_margin),
    )


def _cert_id_hashes(ca: Section) -> tuple[str, ...]:
    names = ca.get("cert_id_hashes", list, list(CAConfig.cert_id_hashes))
    for name in names:
        if name not in _CERT_ID_HASHES:
            raise ca.error(
                "cert_id_hashes", f"{name!r}: each must be one of {', '.join(_CERT_ID_HASHES)}"
            )
    return tuple(dict.fromkeys(names))


def _include_ca(ca: Section) -> bool | None:
    """``ca.include_ca_certificate``: true, false or "auto" (the default: a root's)."""
    value = ca.table.get("include_ca_certificate", "auto")
    if value == "auto":
        return None
    if not isinstance(value, bool):
        raise ca.error("include_ca_certificate", 'must be true, false or "auto"')
    return value


def _server(server: Section) -> ServerConfig:
    listen = host_port(server, "listen", f"{_SERVER.listen_host}:{_SERVER.listen_port}")
    assert listen is not None
    return ServerConfig(
        listen_host=listen[0],
        listen_port=listen[1],
        workers=server.positive("workers", _SERVER.workers),
        metrics_listen=host_port(server, "metrics_listen", None),
        max_request_bytes=server.positive("max_request_bytes", _SERVER.max_request_bytes),
        max_cert_ids=server.positive("max_cert_ids", _SERVER.max_cert_ids),
        log_format=server.choice("log_format", _SERVER.log_format),
        nonce=server.choice("nonce", _SERVER.nonce),
        cache_entries=server.positive("cache_entries", _SERVER.cache_entries),
        cache_bytes=server.positive("cache_bytes", _SERVER.cache_bytes),
        max_pending_signatures=server.positive(
            "max_pending_signatures", _SERVER.max_pending_signatures
        ),
        read_timeout=server.seconds("read_timeout", _SERVER.read_timeout),
        index_stale_after=server.seconds("index_stale_after", _SERVER.index_stale_after),
        drain_timeout=server.seconds("drain_timeout", _SERVER.drain_timeout),
        state_dir=_state_dir(server),
        max_connections=(
            server.positive("max_connections", 1) if "max_connections" in server.table else None
        ),
    )


def _state_dir(server: Section) -> Path | None:
    raw = server.get("state_dir", str)
    if raw is None:
        return None
    return Path(raw) if Path(raw).is_absolute() else server.path.parent / raw


def _token(token: Section) -> TokenConfig:
    if "pin_env" in token.table and "pin_file" in token.table:
        raise token.error("pin_file", "give pin_env or pin_file, not both")
    pin_file = token.get("pin_file", str)
    return TokenConfig(
        module=token.get("module", str, _TOKEN.module),
        pin_env=None if pin_file else token.get("pin_env", str, _TOKEN.pin_env),
        pin_file=None if pin_file is None else (token.path.parent / pin_file),
        sign_timeout=token.seconds("sign_timeout", _TOKEN.sign_timeout),
        sessions=token.positive("sessions", _TOKEN.sessions),
        keepalive=token.seconds("keepalive", _TOKEN.keepalive)
        if "keepalive" in token.table
        else 0.0,
    )


def _cas(file: Path, raw_cas: object, signing: bool) -> tuple[CAConfig, ...]:
    if not isinstance(raw_cas, list) or not raw_cas:
        raise ConfigError(file, "ca", "at least one [[ca]] table is required")
    cas: list[CAConfig] = []
    issuers: dict[tuple[bytes, bytes], int] = {}  # (subject, public key) -> [[ca]] index
    for i, raw in enumerate(raw_cas):
        ca = Section(file, f"ca[{i}]", raw, _CA_KEYS)
        ca_config = _ca(ca, {c.name for c in cas}, signing)
        cert = ca_config.certificate
        issuer = (cert.subject.public_bytes(), spki(cert))
        if issuer in issuers:  # one CertID, two indexes: which status would be the truth?
            raise ca.error(
                "certificate",
                f"{ca_config.certificate_path} is the issuer of ca[{issuers[issuer]}] too: "
                "serve each CA from one [[ca]] with its one index",
            )
        issuers[issuer] = i
        cas.append(ca_config)
    return tuple(cas)


def _ca_name(ca: Section, taken: set[str]) -> str:
    name: str = ca.required("name", str)
    if not _CA_NAME.fullmatch(name) or name in ("healthz", "readyz", "metrics"):
        raise ca.error("name", f"{name!r}: use letters, digits, '-', '_', '.'")
    if name in taken:
        raise ca.error("name", f"{name!r} is used by another [[ca]]")
    return name


def _ca(ca: Section, taken: set[str], signing: bool = True) -> CAConfig:
    name = _ca_name(ca, taken)
    cert_path, cert = ca.certificate("certificate")
    responders = ca.responder_certificates("responder_certificate")
    resp_path, resp_cert = in_use(responders) if responders else (None, None)
    assert cert_path is not None
    crl = crl_config(ca, cert) if signing else None  # an edge reads no status source
    index = ca.file("index", required=signing and crl is None) or _NO_INDEX
    try:  # an edge signs nothing: it may leave the key out
        key = parse_pkcs11_uri(ca.required("key", str) if signing or "key" in ca.table else _NO_KEY)
    except ValueError as exc:
        raise ca.error("key", str(exc)) from None
    config = CAConfig(
        name=name,
        certificate_path=cert_path,
        certificate=cert,
        index=index,
        key=key,
        validity=ca.duration("validity", DEFAULT_VALIDITY),
        responder_certificate_path=resp_path,
        responder_certificate=resp_cert,
        responder_certificates=responders,
        signature_hash=ca.one_of(
            "signature_hash", CAConfig.signature_hash, ("sha256", "sha384", "sha512")
        ),
        rsa_padding=ca.choice("rsa_padding", CAConfig.rsa_padding),
        unknown_serials=ca.choice("unknown_serials", CAConfig.unknown_serials),
        max_index_bytes=ca.positive("max_index_bytes", CAConfig.max_index_bytes),
        cert_id_hashes=_cert_id_hashes(ca),
        include_ca_certificate=_include_ca(ca),
        crl=crl,
    )
    for path, certificate in config.signing_certificates:
        try:
            config.scheme_for(certificate)  # a key type we cannot sign with
        except ValueError as exc:
            raise ca.error(config.signer_key, f"{path}: {exc}") from None
    return config
