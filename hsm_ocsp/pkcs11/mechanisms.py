"""The PKCS#11 mechanism (and parameter) of each signature scheme."""

from __future__ import annotations

from typing import Any

from pkcs11 import Mechanism
from pkcs11.mechanisms import MGF

from ..core.signing import SchemeKind, SignatureScheme

_PSS_PARAMS = {
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}


def mechanism_for(scheme: SignatureScheme) -> tuple[Mechanism, Any]:
    """The PKCS#11 mechanism and its parameter for a signature scheme."""
    if scheme.kind is not SchemeKind.RSA_PSS:
        return Mechanism[scheme.mechanism], None
    assert scheme.hash_name is not None
    hash_mechanism, mgf = _PSS_PARAMS[scheme.hash_name]
    return Mechanism[scheme.mechanism], (hash_mechanism, mgf, scheme.pss_salt_length)
