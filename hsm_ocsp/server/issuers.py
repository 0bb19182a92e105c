"""Each CA of a configuration as the answer services see it, and the keys its stored
records are checked with: the same for a signing host, its workers and an edge."""

from __future__ import annotations

from ..config.model import Config, UnknownSerials
from ..core.record_check import SignerKeys
from ..core.responder import Issuer
from ..core.shared_answers import signer_fingerprint
from ..core.signing import SignatureScheme

__all__ = ["issuers_of", "signer_keys"]


def issuers_of(config: Config) -> list[Issuer]:
    """Each CA as the service sees it, with every certificate that may sign for it."""
    return [
        Issuer.from_certificates(
            ca.name,
            ca.certificate,
            [cert for _, cert in ca.responder_certificates] or None,
            ca.validity,
            unknown_as_revoked=ca.unknown_serials is UnknownSerials.REVOKED,
            cert_id_hashes=ca.cert_id_hashes,
            include_ca_certificate=ca.includes_ca_certificate,
        )
        for ca in config.cas
    ]


def signer_keys(config: Config) -> SignerKeys:
    """Per CA, the key and scheme of each certificate that signs for it, by the
    fingerprint stored records carry: what a copied or served record is checked with."""
    keys: dict[str, dict[bytes, tuple[object, SignatureScheme]]] = {}
    for ca, issuer in zip(config.cas, issuers_of(config), strict=True):
        certificates = [c for _, c in ca.signing_certificates]  # in the issuer's order
        keys[ca.name] = {
            signer_fingerprint(signer): (cert.public_key(), ca.scheme_for(cert))
            for signer, cert in zip(issuer.signers, certificates, strict=True)
        }
    return keys
