"""The serials a CA issued, for a CA served from CRLs: a CRL lists only the revoked.

``issued`` is a directory of certificates (PEM or DER, one a file, as ``openssl ca``
keeps them in ``new_certs_dir``; EJBCA, step-ca and Vault export the same) or a file
of serials, one hexadecimal serial a line (``#`` begins a comment; quotes, colons,
hyphens and spaces in a serial are left out, as ``certutil`` and Vault export them). Re-read when it
changes; a certificate file is read once (its name stays with its serial).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography import x509

from .crl_fetch import FetchError

__all__ = ["IssuedSerials"]

_HEX = re.compile(r"[0-9A-Fa-f]{1,256}")
# What exports put in and around a serial: quotes (certutil's CSV), colons (Vault's
# "17:67:16:..."), spaces and hyphens.
_SEPARATORS = re.compile(r"[\s\"':-]")
_CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der")
MAX_CERT_BYTES = 1 << 20


class IssuedSerials:
    def __init__(self, path: Path, max_bytes: int, issuer: x509.Name) -> None:
        """``issuer``: a directory's certificates of another CA are not counted."""
        self.path, self.max_bytes, self.issuer = path, max_bytes, issuer
        self._seen: tuple[int, int, int] | None = None
        self._files: dict[str, int] = {}  # file name -> serial (a directory's)
        self.serials: frozenset[int] | None = None

    def read(self) -> bool:
        """Read again if changed; True if ``serials`` is new. FetchError: unreadable
        (the serials read last stay)."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise FetchError(f"{self.path}: cannot read: {exc.strerror}") from None
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if key == self._seen:
            return False
        if os.path.isdir(self.path):
            serials, complete = self._directory()
        else:
            serials, complete = self._file(info.st_size), True
        self._seen = key if complete else None  # a file not yet whole: read again
        self.serials = serials
        return True

    def _file(self, size: int) -> frozenset[int]:
        if size > self.max_bytes:
            raise FetchError(f"{self.path}: {size} bytes, over crl_max_bytes ({self.max_bytes})")
        try:
            text = self.path.read_text("ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise FetchError(f"{self.path}: cannot read: {exc}") from None
        serials = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = _SEPARATORS.sub("", raw.split("#", 1)[0])
            if not line:
                continue
            if not _HEX.fullmatch(line):
                raise FetchError(f"{self.path}:{number}: {line[:40]!r} is not a hex serial")
            serials.append(int(line, 16))
        return frozenset(serials)

    def _directory(self) -> tuple[frozenset[int], bool]:
        try:
            names = [
                e.name
                for e in os.scandir(self.path)
                if e.name.lower().endswith(_CERT_SUFFIXES) and e.is_file()
            ]
        except OSError as exc:
            raise FetchError(f"{self.path}: cannot read: {exc.strerror}") from None
        files, complete = {}, True
        for name in names:
            serial = self._files.get(name)
            if serial is None:
                serial = self._serial_of(self.path / name)
                if serial is None:
                    complete = False
                    continue
            files[name] = serial
        self._files = files
        return frozenset(s for s in files.values() if s >= 0), complete

    def _serial_of(self, path: Path) -> int | None:
        """The certificate's serial; -1 for one of another CA; None: not readable now."""
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_CERT_BYTES)
            load = (
                x509.load_pem_x509_certificate
                if b"-----BEGIN" in data[:100]
                else (x509.load_der_x509_certificate)
            )
            cert = load(data)
        except (OSError, ValueError):
            return None  # not a certificate (yet: a file half-written shows next time)
        return cert.serial_number if cert.issuer == self.issuer else -1
