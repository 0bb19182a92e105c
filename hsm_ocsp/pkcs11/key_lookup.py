"""Which private key on the token a responder key is: by the URI, or by the certificate's
public key."""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from ..core.pkcs11_uri import Pkcs11Uri
from ..core.signing import SignatureScheme
from .keys import public_key_from_token

T = TypeVar("T")
# What a token answers a look-up over its rate (AWS CloudHSM: 10 a second an HSM, then
# CKR_DEVICE_ERROR); each step of a look-up is tried again once the rate window passed.
LOOKUP_THROTTLED = (p11e.DeviceError, p11e.FunctionFailed, p11e.DeviceMemory)
LOOKUP_PAUSE = 0.5  # seconds before a throttled step is tried again (then doubled, to 2 s)
LOOKUP_PATIENCE = 30.0  # seconds the steps of one key's look-up may be throttled in all


class Patience:
    """The time one key's look-up may spend waiting out a throttled token, and how many
    steps it tried again (``retried``)."""

    def __init__(self, seconds: float = LOOKUP_PATIENCE) -> None:
        self.deadline = time.monotonic() + seconds
        self.retried = 0

    def step(self, call: Callable[[], T]) -> T:
        """``call()``, tried again while the token throttles it, within the deadline."""
        pause = LOOKUP_PAUSE
        while True:
            try:
                return call()
            except LOOKUP_THROTTLED:
                if time.monotonic() + pause > self.deadline:
                    raise
                time.sleep(pause * random.uniform(1.0, 1.5))
                pause = min(pause * 2, 2.0)
                self.retried += 1


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
    except LOOKUP_THROTTLED:
        raise  # tried again by the caller
    except (ValueError, p11e.PKCS11Error):  # a key type we do not sign with
        return None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def find_key(session: Any, spec: KeySpec, patience: Patience | None = None) -> Any:
    """The private-key object of ``spec``; python-pkcs11's NoSuchKey if none.

    The key the URI names, unless the public-key object beside it (same label and
    id) is of another key than ``spec.public_key``; then the private key paired with
    the public-key object of that value on the token, whatever its label. Each step is
    tried again while the token throttles look-ups (``patience``).
    """
    step = (patience or Patience()).step
    uri = spec.uri
    try:
        named = step(
            lambda: session.get_key(
                object_class=ObjectClass.PRIVATE_KEY, label=uri.object, id=uri.id
            )
        )
    except (p11e.NoSuchKey, p11e.MultipleObjectsReturned):
        if spec.public_key is None:
            raise
        named = None
    if spec.public_key is None:
        return named
    if named is not None and _of_key(session, named, spec.public_key, step):
        return named  # (else the URI names another key than the certificate's)
    return _by_public_key(session, spec.name, spec.public_key, step)


Step = Callable[[Callable[[], Any]], Any]


def _of_key(session: Any, named: Any, public_key: bytes, step: Step) -> bool:
    """Whether the private key ``named`` is of ``public_key``, as the public-key object
    beside it says (none beside it: taken as it is)."""
    where = step(lambda: _public_of(named))
    beside = step(lambda: list(session.get_objects(where)))
    return not beside or bool(step(lambda: _spki(beside[0])) == public_key)


def _by_public_key(session: Any, name: str, public_key: bytes, step: Step) -> Any:
    """The private key paired with the public-key object of ``public_key``."""
    # Read the whole search first: a search left open makes the next one fail
    # (CKR_OPERATION_ACTIVE).
    found = step(lambda: list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})))
    for public in found:
        if step(functools.partial(_spki, public)) == public_key:
            pair = step(functools.partial(_pair_of, public))
            get = functools.partial(session.get_key, object_class=ObjectClass.PRIVATE_KEY, **pair)
            return step(get)
    raise p11e.NoSuchKey(name)


def _pair_of(obj: Any) -> dict[str, Any]:
    """How to find the other half of a key pair: by id, else by label."""
    key_id = obj[Attribute.ID] or None
    return {"id": key_id} if key_id else {"label": obj[Attribute.LABEL]}


def _public_of(private: Any) -> dict[Attribute, Any]:
    pair = _pair_of(private)
    where = Attribute.ID if "id" in pair else Attribute.LABEL
    return {Attribute.CLASS: ObjectClass.PUBLIC_KEY, where: next(iter(pair.values()))}
