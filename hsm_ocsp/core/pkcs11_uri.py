"""RFC 7512 PKCS#11 URIs: the parts that select a token and a key."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote, unquote_to_bytes

__all__ = ["Pkcs11Uri", "parse_pkcs11_uri"]

# Path attributes we understand; others of RFC 7512 are accepted and ignored
# only when they cannot change which key is meant (library-* and slot-*).
_KNOWN = {"token", "object", "id", "serial", "manufacturer", "model", "type"}
_IGNORED = {
    "library-description",
    "library-manufacturer",
    "library-version",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
}


@dataclasses.dataclass(frozen=True)
class Pkcs11Uri:
    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    type: str | None = None

    def __str__(self) -> str:
        parts = []
        for name in ("token", "manufacturer", "model", "serial", "object"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={quote(value, safe='')}")
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        if self.type is not None:
            parts.append(f"type={self.type}")
        return "pkcs11:" + ";".join(parts)


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse ``pkcs11:token=...;object=...;id=%01`` into its parts.

    Raises ValueError with a message fit for the user; a PIN in the URI is
    refused because the PIN must come from the environment or a file.
    """
    if not text.startswith("pkcs11:"):
        raise ValueError("a PKCS#11 URI starts with 'pkcs11:'")
    body = text[len("pkcs11:") :]
    path = body.partition("?")[0]
    if "pin-value" in body or "pin-source" in body:
        raise ValueError("the URI must not carry a PIN; use pin_env or pin_file")
    values = _attributes(path)
    if values.get("type", "private") not in ("private", "public", "cert"):
        raise ValueError("type must be private, public or cert")
    if "object" not in values and "id" not in values:
        raise ValueError("the URI names no key: give object= or id=")
    return Pkcs11Uri(**values)  # type: ignore[arg-type]


def _attributes(path: str) -> dict[str, str | bytes]:
    """The path attributes, decoded: ``id`` as bytes, the others as text."""
    values: dict[str, str | bytes] = {}
    for part in filter(None, path.split(";")):
        name, eq, raw = part.partition("=")
        if not eq:
            raise ValueError(f"attribute {name!r} has no value")
        if name in values:
            raise ValueError(f"attribute {name!r} given twice")
        if name in _IGNORED:
            continue
        if name not in _KNOWN:
            raise ValueError(f"unknown attribute {name!r}")
        decoded = unquote_to_bytes(raw)
        try:
            values[name] = decoded if name == "id" else decoded.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"attribute {name!r} is not UTF-8") from exc
    return values
