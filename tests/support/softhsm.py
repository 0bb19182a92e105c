"""A SoftHSM token for the tests, benchmarks and soak, made by the package's own
``init-token.sh``."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any

import pkcs11

from hsm_ocsp.cli.softhsm_token import init_softhsm_token
from hsm_ocsp.core.pkcs11_uri import Pkcs11Uri
from hsm_ocsp.pkcs11.keys import generate_key_pair, public_key_from_token

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "71942563"
SO_PIN = "88113355"
TOKEN_LABEL = "hsm-ocsp-test"


def use_softhsm_token(conf: Path, *, label: str, pin: str, so_pin: str) -> None:
    """``init_softhsm_token``, then point this process and its children at it.

    Sets SOFTHSM2_CONF (before python-pkcs11 loads the module, which reads it
    once a process) and HSM_OCSP_PIN.
    """
    init_softhsm_token(conf, label=label, pin=pin, so_pin=so_pin)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["HSM_OCSP_PIN"] = pin


_labels = itertools.count(1)


@dataclasses.dataclass
class SoftHSM:
    conf: Path
    label: str
    module: str = MODULE
    pin: str = PIN

    def session(self) -> Any:
        return (
            pkcs11.lib(self.module)
            .get_token(token_label=self.label)
            .open(user_pin=self.pin, rw=True)
        )

    def make_key(self, algorithm: str = "ec-p256", label: str | None = None) -> tuple[str, Any]:
        """A key pair on the token; returns (URI, cryptography public key)."""
        label = label or f"key{next(_labels)}-{os.getpid()}"
        with self.session() as session:
            public, _private, _ = generate_key_pair(session, algorithm, label=label, key_id=None)
            public_key = public_key_from_token(public)
        return str(Pkcs11Uri(token=self.label, object=label)), public_key

    def import_key(self, key_pem: bytes, label: str) -> str:
        """Put a software EC key on the token (for a CA that signs its own responses)."""
        from cryptography.hazmat.primitives import serialization
        from pkcs11 import Attribute
        from pkcs11.util.ec import decode_ec_private_key

        key = serialization.load_pem_private_key(key_pem, None)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        attrs = decode_ec_private_key(der)
        attrs.update(
            {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.SIGN: True,
                Attribute.LABEL: label,
                Attribute.ID: label.encode(),
            }
        )
        with self.session() as session:
            session.create_object(attrs)
        return str(Pkcs11Uri(token=self.label, object=label))
