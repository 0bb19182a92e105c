"""A CA made with ``openssl ca`` with certificates in every state, and a
configuration that serves it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from .pki import OpenSSLCA
from .softhsm import MODULE, SoftHSM

_labels = iter(range(1, 10**9))
_HASHES = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384()}


@dataclasses.dataclass
class CASetup:
    """A CA with certificates in every state, and a responder key on the token."""

    ca: OpenSSLCA
    certs: dict[str, Path]
    key_uri: str
    responder_cert: Path | None

    def serial(self, name: str) -> int:
        return self.ca.serial_of(self.certs[name])

    def request(self, name: str, algorithm: str = "sha256", *, nonce: bytes | None = None) -> bytes:
        """An OCSP request (DER) for certificate ``name``, as cryptography's builder
        makes it; ``nonce``: the value of a nonce extension."""
        cert = x509.load_pem_x509_certificate(self.certs[name].read_bytes())
        builder = ocsp.OCSPRequestBuilder().add_certificate(
            cert, self.ca.certificate, _HASHES[algorithm]
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.build().public_bytes(serialization.Encoding.DER)


REVOCATIONS: dict[str, tuple[str, ...]] = {
    "revoked": (),
    "keycompromise": ("-crl_reason", "keyCompromise"),
    "superseded": ("-crl_reason", "superseded"),
    "hold": ("-crl_hold", "holdInstructionReject"),
    "keytime": ("-crl_compromise", "20260101120000Z"),
    "cakeytime": ("-crl_CA_compromise", "20251231000000Z"),
}


def build_ca(
    directory: Path,
    softhsm: SoftHSM,
    *,
    name: str = "Test Root CA",
    algorithm: str = "ec-p256",
    delegated: bool = True,
) -> CASetup:
    ca = OpenSSLCA(directory, name)
    certs = {"good": ca.issue("good")}
    for cert_name, options in REVOCATIONS.items():
        certs[cert_name] = ca.issue(cert_name)
        ca.revoke(certs[cert_name], *options)
    certs["expired"] = ca.issue("expired", start="20200101000000Z", end="20200201000000Z")
    ca.updatedb()
    if delegated:
        key_uri, public_key = softhsm.make_key(algorithm)
        responder = ca.sign_responder(public_key)
    else:
        key_uri = softhsm.import_key(ca.key_pem, f"ca-{directory.name}-{next(_labels)}")
        responder = None
    return CASetup(ca=ca, certs=certs, key_uri=key_uri, responder_cert=responder)


def write_config(
    path: Path,
    setups: dict[str, CASetup],
    *,
    server: str = "",
    port: int = 0,
    producer: str = "",
    crls: dict[str, Path] | None = None,
    **ca_extra: str,
) -> Path:
    """``crls``: CAs served from the CRL file given (``openssl ca -gencrl``) and their
    ``new_certs_dir``, instead of their index."""
    lines = ["[server]", f'listen = "127.0.0.1:{port or 8080}"', server, ""]
    if producer:
        lines += ["[producer]", producer, ""]
    lines += ["[token]", f'module = "{MODULE}"', ""]
    for name, setup in setups.items():
        lines += [
            "[[ca]]",
            f'name = "{name}"',
            f'certificate = "{setup.ca.cert_path}"',
            *(
                [f'index = "{setup.ca.index}"']
                if name not in (crls or {})
                else [f'crl = "{(crls or {})[name]}"', f'issued = "{setup.ca.dir / "newcerts"}"']
            ),
            f'key = "{setup.key_uri}"',
        ]
        if setup.responder_cert is not None:
            lines.append(f'responder_certificate = "{setup.responder_cert}"')
        lines += [f"{k} = {v}" for k, v in ca_extra.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path
