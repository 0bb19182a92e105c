"""Typed reads of one TOML table; every error names the file and the key."""

from __future__ import annotations

import datetime as dt
import enum
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from ..core.errors import ConfigError

E = TypeVar("E", bound=enum.StrEnum)

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


class Section:
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

    def one_of(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}")
        return value

    def choice(self, name: str, default: E) -> E:
        """A member of ``default``'s enum, by its value."""
        kind = type(default)
        return kind(self.one_of(name, default.value, tuple(member.value for member in kind)))

    def positive(self, name: str, default: int) -> int:
        value: int = self.get(name, int, default)
        if value < 1:
            raise self.error(name, "must be 1 or more")
        return value

    def duration(self, name: str, default: dt.timedelta) -> dt.timedelta:
        if name not in self.table:
            return default
        try:
            return parse_duration(self.get(name, str))
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def seconds(self, name: str, default: float) -> float:
        """A duration (``"5s"``, ``"2m"``) in seconds."""
        return self.duration(name, dt.timedelta(seconds=default)).total_seconds()

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
        paths = [p for text in names for p in self._certificate_files(name, text)]
        certs = []
        for path in paths:
            try:
                certs.append((path, load_certificate(path)))
            except (OSError, ValueError) as exc:
                raise self.error(name, f"{path} is not a PEM or DER certificate ({exc})") from None
        return tuple(certs)

    def _certificate_files(self, name: str, text: str) -> list[Path]:
        """The file ``text`` names, or the certificate files of the directory it names."""
        path = Path(text) if Path(text).is_absolute() else self.path.parent / text
        if path.is_file():
            return [path]
        if not path.is_dir():
            raise self.error(name, f"file {path} does not exist")
        found = sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt", ".der"))
        if not found:
            raise self.error(name, f"directory {path} holds no .pem, .crt or .der")
        return found

    def certificate(self, name: str, *, required: bool = True) -> tuple[Path | None, Any]:
        path = self.file(name, required=required)
        if path is None:
            return None, None
        try:
            return path, load_certificate(path)
        except (OSError, ValueError) as exc:
            raise self.error(name, f"{path} is not a PEM or DER certificate ({exc})") from None


def host_port(section: Section, name: str, default: str | None) -> tuple[str, int] | None:
    raw = section.get(name, str, default)
    if raw is None:
        return None
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise section.error(name, f"{raw!r} is not host:port")
    return host, int(port)


def read_toml(path: Path, text: str | None = None) -> dict[str, Any]:
    """A TOML file (or ``text``, read from it before) as a dict; ConfigError naming the
    file if it cannot be read."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8") if text is None else text)
    except OSError as exc:
        raise ConfigError(path, "(file)", f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "(file)", f"not valid TOML: {exc}") from None
