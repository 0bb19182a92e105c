"""Which private key on the token a responder key is: by the URI, or by the certificate's
public key."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from ..core.pkcs11_uri import Pkcs11Uri
from ..core.signing import SignatureScheme
from .keys import public_key_from_token


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """A key the responder signs with: where it is and how to use it.

    The key is the private key the URI names (label, id), unless ``public_key``
    (DER SubjectPublicKeyInfo, of the certificate) says otherwise: then it is the
    private key paired with the public-key object of that value on the URI's token,
    whatever its label, so a new key joins without a new URI.
    """

    name: str
    uri: Pkcs11Uri
    scheme: SignatureScheme
    public_key: bytes | None = None


def _spki(public: Any) -> bytes | None:
    try:
        key = public_key_from_token(public)
    except (ValueError, p11e.PKCS11Error):  # a key type we do not sign with
        return None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def find_key(session: Any, spec: KeySpec) -> Any:
    """The private-key object of ``spec``; python-pkcs11's NoSuchKey if none.

    The key the URI names, unless the public-key object beside it (same label and
    id) is of another key than ``spec.public_key``; then the private key paired with
    the public-key object of that value on the token, whatever its label.
    """
    uri = spec.uri
    try:
        named = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=uri.object, id=uri.id)
    except (p11e.NoSuchKey, p11e.MultipleObjectsReturned):
        if spec.public_key is None:
            raise
        named = None
    if named is not None and spec.public_key is not None:
        beside = list(session.get_objects(_public_of(named)))
        if beside and _spki(beside[0]) != spec.public_key:
            named = None  # the URI names another key than the certificate's
    if named is not None:
        return named
    if spec.public_key is None:
        raise p11e.NoSuchKey(spec.name)
    # Read the whole search first: a search left open makes the next one fail
    # (CKR_OPERATION_ACTIVE).
    for public in list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})):
        if _spki(public) == spec.public_key:
            return session.get_key(object_class=ObjectClass.PRIVATE_KEY, **_pair_of(public))
    raise p11e.NoSuchKey(spec.name)


def _pair_of(obj: Any) -> dict[str, Any]:
    """How to find the other half of a key pair: by id, else by label."""
    key_id = obj[Attribute.ID] or None
    return {"id": key_id} if key_id else {"label": obj[Attribute.LABEL]}


def _public_of(private: Any) -> dict[Attribute, Any]:
    pair = _pair_of(private)
    where = Attribute.ID if "id" in pair else Attribute.LABEL
    return {Attribute.CLASS: ObjectClass.PUBLIC_KEY, where: next(iter(pair.values()))}
