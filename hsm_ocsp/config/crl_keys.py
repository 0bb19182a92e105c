"""The keys of a ``[[ca]]`` served from CRLs (``crl``, ``crl_url``, ...), checked whole."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from .model import CrlConfig, NotOnCrl
from .section import Section

__all__ = ["CRL_KEYS", "crl_config"]

CRL_KEYS = {
    "crl",
    "crl_url",
    "crl_delta",
    "crl_delta_url",
    "crl_issuer",
    "issued",
    "not_on_crl",
    "crl_fetch_interval",
    "crl_grace",
    "crl_max_bytes",
}


def _places(ca: Section, file_key: str, url_key: str) -> tuple[str, ...]:
    found: list[str] = []
    for key in (file_key, url_key):
        raw = ca.table.get(key)
        if raw is None:
            continue
        values = raw if isinstance(raw, list) else [raw]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise ca.error(key, "must be a string or a list of strings")
        found += [_place(ca, key, value, url=key == url_key) for value in values]
    return tuple(found)


def _place(ca: Section, key: str, value: str, *, url: bool) -> str:
    """A URL as it is, a file as its path (relative to the configuration's directory)."""
    if url:
        if not value.startswith(("http://", "https://")):
            raise ca.error(key, f"{value!r}: an http:// or https:// URL is expected")
        return value
    path = Path(value) if Path(value).is_absolute() else ca.path.parent / value
    if not path.is_file():
        raise ca.error(key, f"file {path} does not exist")
    return str(path)


def crl_config(ca: Section, certificate: x509.Certificate) -> CrlConfig | None:
    """The CA's CRL settings, or None if it is served from an index."""
    fulls = _places(ca, "crl", "crl_url")
    if not fulls:
        for key in CRL_KEYS & set(ca.table):
            raise ca.error(key, 'needs crl = "file" or crl_url = "http://..."')
        return None
    if "index" in ca.table:
        raise ca.error("index", "give index or crl / crl_url, not both")
    issuer_path, issuer = ca.certificate("crl_issuer", required=False)
    if issuer is not None:
        _check_delegate(ca, certificate, issuer)
    issued = _issued(ca)
    not_on_crl = ca.choice("not_on_crl", NotOnCrl.UNKNOWN)
    if issued is None and not_on_crl is NotOnCrl.UNKNOWN:
        raise ca.error(
            "issued",
            'a CA served from CRLs needs issued = "DIR or FILE" (the '
            'serials it issued) or not_on_crl = "good": a CRL lists only the '
            "revoked",
        )
    if issued is not None and "not_on_crl" in ca.table and not_on_crl is NotOnCrl.GOOD:
        raise ca.error("not_on_crl", 'give issued or not_on_crl = "good", not both')
    return CrlConfig(
        fulls=fulls,
        deltas=_places(ca, "crl_delta", "crl_delta_url"),
        issuer_path=issuer_path,
        issuer=issuer,
        issued=issued,
        not_on_crl=not_on_crl,
        fetch_interval=ca.duration("crl_fetch_interval", CrlConfig.fetch_interval),
        grace=ca.duration("crl_grace", CrlConfig.grace),
        max_bytes=ca.positive("crl_max_bytes", CrlConfig.max_bytes),
    )


def _issued(ca: Section) -> Path | None:
    raw = ca.get("issued", str)
    if raw is None:
        return None
    path = Path(raw) if Path(raw).is_absolute() else ca.path.parent / raw
    if not path.exists():
        raise ca.error(
            "issued", f"{path} does not exist (a directory of certificates or a file of serials)"
        )
    return path


def _check_delegate(ca: Section, certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """A CRL issuer is taken only if the CA certified it for cRLSign."""
    try:
        issuer.verify_directly_issued_by(certificate)
    except (ValueError, TypeError) as exc:
        raise ca.error("crl_issuer", f"not issued by the CA's certificate ({exc})") from None
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.crl_sign:
        raise ca.error("crl_issuer", "its key usage lacks cRLSign")
