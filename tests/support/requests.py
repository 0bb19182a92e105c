"""OCSP requests for tests, built with asn1crypto (independent of our encoder)."""

from __future__ import annotations

import hashlib

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509

from hsm_ocsp.core.responder import key_hash

_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "md5": "1.2.840.113549.2.5",
}


def cert_id(issuer: x509.Certificate, serial: int, algorithm: str = "sha1") -> asn1_ocsp.CertId:
    hash_name = "sha1" if algorithm == "md5" else algorithm
    return asn1_ocsp.CertId(
        {
            "hash_algorithm": {"algorithm": _OIDS[algorithm]},
            "issuer_name_hash": hashlib.new(hash_name, issuer.subject.public_bytes()).digest(),
            "issuer_key_hash": key_hash(issuer, hash_name),
            "serial_number": serial,
        }
    )


def build_request(
    items: list[tuple[x509.Certificate, int]] | list[asn1_ocsp.CertId],
    *,
    algorithm: str = "sha1",
    nonce: bytes | None = None,
    raw_nonce_value: bytes | None = None,
    extensions: list[tuple[str, bool, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """DER OCSPRequest for (issuer, serial) pairs or ready CertIds."""
    requests = []
    for item in items:
        cid = item if isinstance(item, asn1_ocsp.CertId) else cert_id(item[0], item[1], algorithm)
        requests.append({"req_cert": cid})
    tbs: dict[str, object] = {"request_list": requests}
    exts = []
    if nonce is not None or raw_nonce_value is not None:
        value = raw_nonce_value
        if value is None:
            assert nonce is not None
            value = asn1_core.OctetString(nonce).dump()
        exts.append(
            {
                "extn_id": "1.3.6.1.5.5.7.48.1.2",
                "critical": False,
                "extn_value": asn1_core.ParsableOctetString(value),
            }
        )
    for oid, critical, value in extensions:
        exts.append(
            {
                "extn_id": oid,
                "critical": critical,
                "extn_value": asn1_core.ParsableOctetString(value),
            }
        )
    if exts:
        tbs["request_extensions"] = [asn1_ocsp.TBSRequestExtension(e) for e in exts]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())
