"""The protocol core with a software signer: no token, no socket. The signer is a
software key behind the same Signer interface the token implements; everything
else (decode, status rules, encode, cache) is the code that runs in production."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp

from hsm_ocsp.core.errors import TokenError
from hsm_ocsp.core.index import IndexSnapshot, parse_index
from hsm_ocsp.core.responder import Issuer, SigningCertificate, key_hash
from hsm_ocsp.core.service import OCSPService
from hsm_ocsp.core.signing import SignatureScheme, scheme_for_public_key

from .pki import OpenSSLCA

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)
_FAR = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
INDEX = (
    "V\t301231235959Z\t\t1000\tunknown\t/CN=good\n"
    "R\t301231235959Z\t261124011953Z,keyCompromise\t1001\tunknown\t/CN=revoked\n"
    "E\t200201000000Z\t\t1002\tunknown\t/CN=expired\n"
    "R\t301231235959Z\t261124011953Z,holdInstruction,holdInstructionReject\t1003\tunknown\t/CN=h\n"
    "R\t301231235959Z\t261124011953Z,keyTime,20260101120000Z\t1004\tunknown\t/CN=k\n"
)


class SoftwareSigner:
    """The Signer interface over a software P-256 key, counting signatures."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.scheme: SignatureScheme = scheme_for_public_key(self.key.public_key())
        self.count = 0
        self.fail = False
        self.meanwhile: Callable[[], None] | None = None  # runs while a signature is made

    def algorithm_identifier(self, name: str) -> bytes:
        return self.scheme.algorithm_identifier

    async def sign(self, name: str, data: bytes) -> bytes:
        if self.meanwhile is not None:
            self.meanwhile()
        if self.fail:
            raise TokenError("token unavailable")
        self.count += 1
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


class World:
    def __init__(self, ca: OpenSSLCA, *, unknown_as_revoked: bool = False, **kw: object) -> None:
        self.ca = ca
        self.signer = SoftwareSigner()
        self.snapshot: IndexSnapshot | None = parse_index(INDEX.encode())
        self.now = NOW
        self.issuer = dataclasses.replace(
            Issuer.from_certificates(
                "root",
                ca.certificate,
                None,
                dt.timedelta(hours=1),
                unknown_as_revoked=unknown_as_revoked,
            ),
            # The fixed clock is older than the CA made for this run: let its
            # certificate count as valid then (its own checks are tested apart).
            signers=(
                SigningCertificate(
                    None, NOW - dt.timedelta(days=1), _FAR, "root", key_hash(ca.certificate)
                ),
            ),
        )
        self.service = OCSPService(
            [self.issuer],
            lambda name: self.snapshot,
            self.signer,
            clock=lambda: self.now,
            **kw,  # type: ignore[arg-type]
        )

    async def ask(self, der: bytes, ca_name: str | None = None) -> x509_ocsp.OCSPResponse:
        reply = await self.service.respond(der, ca_name)
        return x509_ocsp.load_der_ocsp_response(reply.body)
