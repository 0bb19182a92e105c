"""Asking a responder about one certificate in a loop, and what each answer said: the
tool of the revocation-safety tests ("never good after the revocation")."""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .waiting import until

__all__ = ["HASHES", "Watch", "request_for", "status_of", "until"]

HASHES = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384()}


def request_for(cert: x509.Certificate, issuer: x509.Certificate, algorithm: str) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, HASHES[algorithm])
    return builder.build().public_bytes(Encoding.DER)


def status_of(url: str, body: bytes, timeout: float = 10) -> object:
    """The certificate status, or the OCSP response status, or the HTTP error code (an
    int), or "down" when nothing answered."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/ocsp-request", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = ocsp.load_der_ocsp_response(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return "down"
    if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return answer.response_status
    return answer.certificate_status


@dataclasses.dataclass
class Watch:
    """Asks ``urls`` for each of ``bodies`` in a loop (a thread) and keeps what came back."""

    urls: list[str]
    bodies: dict[str, bytes]
    seen: list[tuple[float, str, str, object]] = dataclasses.field(default_factory=list)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                for what, body in self.bodies.items():
                    self.seen.append((time.monotonic(), url, what, status_of(url, body, 5)))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def good_after(self, when: float) -> list[tuple[float, str, str, object]]:
        """Every answer "good" received after ``when`` (a monotonic time)."""
        return [s for s in self.seen if s[0] > when and s[3] is ocsp.OCSPCertStatus.GOOD]

    def last(self, url: str, what: str) -> object:
        found = [s[3] for s in self.seen if s[1] == url and s[2] == what]
        return found[-1] if found else None
