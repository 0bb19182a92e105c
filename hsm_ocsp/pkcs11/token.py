"""The PKCS#11 token: sessions, key look-up, signing, recovery.

Every call into the module runs on one thread that this object owns: python-
pkcs11 initialises with ``C_Initialize(NULL)``, which turns SoftHSM's locking
off, so two threads in one process must never call it at once (measured with
SoftHSM 2.6 and python-pkcs11 0.10: concurrent calls corrupt its sessions).
Failures mark the token down; the next attempt after a growing back-off
re-initialises the module, opens the sessions and logs in again, so a token
that comes back is used again without a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.mechanisms import MGF

from ..core.errors import TokenError
from ..core.pkcs11_uri import Pkcs11Uri
from ..core.signing import SignatureScheme
from .keys import public_key_from_token, select_token
from .login_gate import LoginGate, LoginRefused

__all__ = ["KeySpec", "Token", "describe_error", "mechanism_for", "return_code"]

log = logging.getLogger("hsm_ocsp.token")
T = TypeVar("T")

_PSS_PARAMS = {
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}


def mechanism_for(scheme: SignatureScheme) -> tuple[Mechanism, Any]:
    """The PKCS#11 mechanism and its parameter for a signature scheme."""
    if scheme.kind != "rsa-pss":
        return Mechanism[scheme.mechanism], None
    assert scheme.hash_name is not None
    hash_mechanism, mgf = _PSS_PARAMS[scheme.hash_name]
    return Mechanism[scheme.mechanism], (hash_mechanism, mgf, scheme.pss_salt_length)


# Failures that another attempt cannot mend; a wrong PIN must not be retried
# because every attempt counts towards the token's lock-out.
# A login refused for one of these stops all logins (see login_gate.py).
_PIN_ERRORS = (
    p11e.PinIncorrect,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.PinInvalid,
    p11e.PinLenRange,
)
_DEFINITE_ERRORS = (
    *_PIN_ERRORS,
    LoginRefused,
    p11e.NoSuchKey,
    p11e.MultipleObjectsReturned,
    p11e.MultipleTokensReturned,
)


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


def describe_error(exc: BaseException) -> str:
    """A PKCS#11 failure in words; never includes the PIN."""
    if isinstance(exc, p11e.PinIncorrect):
        return "login failed: the PIN is incorrect"
    if isinstance(exc, p11e.PinLocked):
        return "login failed: the PIN is locked"
    if isinstance(exc, p11e.PinExpired):
        return "login failed: the PIN has expired"
    if isinstance(exc, (p11e.PinInvalid, p11e.PinLenRange)):
        return "login failed: the token refuses this PIN's characters or length"
    if isinstance(exc, LoginRefused):
        return f"login not tried: earlier {exc}; fix the PIN, then SIGHUP or restart"
    if isinstance(exc, p11e.NoSuchToken):
        return "no such token"
    if isinstance(exc, p11e.NoSuchKey):
        return "no such private key"
    if isinstance(exc, p11e.MultipleObjectsReturned):
        return "the URI matches more than one private key; add id= or object="
    if isinstance(exc, p11e.MultipleTokensReturned):
        return "several tokens match; add token= to the URI"
    if type(exc) is p11e.PKCS11Error:  # no return code: the module did not load
        return f"the module could not be loaded: {exc}"
    if isinstance(exc, p11e.PKCS11Error):
        hint = _HINTS.get(type(exc))
        return f"{return_code(exc)}" + (f": {hint}" if hint else "")
    return f"{type(exc).__name__}: {exc}"


def return_code(exc: BaseException) -> str:
    """The PKCS#11 return code's name of a python-pkcs11 exception: CKR_MECHANISM_INVALID."""
    return "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()


# What to try, for the failures seen on real tokens.
_HINTS: dict[type[BaseException], str] = {
    p11e.GeneralError: "the module failed (is its daemon, server or TPM running?)",
    p11e.DeviceError: "the token's device failed",
    p11e.DeviceRemoved: "the token was removed",
    p11e.TokenNotPresent: "no token in the slot",
    p11e.TokenNotRecognised: "the module does not recognise the token",
    p11e.MechanismInvalid: "the token does not offer this mechanism",
    p11e.AttributeValueInvalid: "the token refuses an attribute of the key template",
    p11e.TemplateInconsistent: "the token refuses this combination of key attributes",
    p11e.FunctionNotSupported: "the module does not implement this function",
    p11e.UserNotLoggedIn: "the session is not logged in",
    p11e.SessionHandleInvalid: "the session was closed (module restarted?)",
}


def _spki(public: Any) -> bytes | None:
    try:
        key = public_key_from_token(public)
    except (ValueError, p11e.PKCS11Error):  # a key type we do not sign with
        return None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _find_key(session: Any, spec: KeySpec) -> Any:
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


class Token:
    """One PKCS#11 module in this process, used from one thread."""

    def __init__(
        self,
        module: str,
        pin: str,
        keys: list[KeySpec],
        *,
        sign_timeout: float = 5.0,
        min_backoff: float = 0.25,
        max_backoff: float = 2.0,
        gate: LoginGate | None = None,
    ) -> None:
        self.module = module
        self._pin = pin
        self._gate = gate
        self._refused: str | None = None  # without a gate: this object's own memory
        self.keys = {k.name: k for k in keys}
        self.sign_timeout = sign_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="pkcs11"
        )
        # State below is touched only on the token thread, except the flags.
        self._lib: Any = None
        self._sessions: dict[int, Any] = {}  # slot id -> the logged-in session
        self._handles: dict[str, Any] = {}
        self._retired: dict[str, KeySpec] = {}  # replaced by a reload, until a reconnect
        self._connected = False
        self._next_attempt = 0.0
        self._backoff = min_backoff
        self._busy_since: float | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.on_state_change: Callable[[bool], None] | None = None
        self.on_sign: Callable[[float], None] | None = None  # seconds of one C_Sign

    def __repr__(self) -> str:  # never show the PIN
        return f"Token(module={self.module!r}, keys={sorted(self.keys)!r})"

    def algorithm_identifier(self, name: str) -> bytes:
        return self.keys[name].scheme.algorithm_identifier

    @property
    def up(self) -> bool:
        """True while the module is connected and the last call worked."""
        return self._connected

    # --- token thread ---------------------------------------------------

    def _set_connected(self, value: bool) -> None:
        changed = value != self._connected
        self._connected = value
        if changed and self.on_state_change is not None:
            self.on_state_change(value)

    def _disconnect(self) -> None:
        for session in self._sessions.values():
            try:
                session.close()
            except Exception:  # a dead session cannot be closed
                pass
        self._sessions.clear()
        self._handles.clear()
        self._retired.clear()

    def _connect(self) -> None:
        self._disconnect()
        if self._lib is None:
            self._lib = pkcs11.lib(self.module)
        else:
            try:
                self._lib.reinitialize()
            except p11e.PKCS11Error:
                self._lib.initialize()
        for spec in self.keys.values():
            self._handles[spec.name] = _find_key(self._session_for(spec), spec)

    def _session_for(self, spec: KeySpec) -> Any:
        """The logged-in session on the key's token. One session (one login) a token,
        whatever each key's URI says of it: a second login to the same token fails
        with UserAlreadyLoggedIn."""
        token = select_token(self._lib, spec.uri)
        where = token.slot.slot_id
        session = self._sessions.get(where)
        if session is None:
            session = self._sessions[where] = self._login(token)
        return session

    def _login(self, token: Any) -> Any:
        """A logged-in session; never a second try of a PIN the token refused."""
        if self._refused is not None:
            raise LoginRefused(self._refused)
        gate = self._gate
        with gate.attempt() if gate is not None else contextlib.nullcontext():
            try:
                return token.open(user_pin=self._pin)
            except _PIN_ERRORS as exc:
                reason = describe_error(exc)
                if gate is not None:
                    gate.refuse(reason)
                else:
                    self._refused = reason
                raise

    def _ensure_connected(self) -> None:
        if self._connected:
            return
        now = time.monotonic()
        if now < self._next_attempt:
            raise TokenError(f"token unavailable ({self.last_error}); retrying soon")
        try:
            self._connect()
        except Exception as exc:
            self._failed(exc)
            raise TokenError(
                f"cannot open token: {describe_error(exc)}",
                retryable=not isinstance(exc, _DEFINITE_ERRORS),
            ) from None
        self._backoff = self._min_backoff
        self.last_error = None
        self._set_connected(True)
        log.info("token connected: module %s, %d key(s)", self.module, len(self.keys))

    def _failed(self, exc: BaseException) -> None:
        self.last_error = describe_error(exc)
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._max_backoff)
        if self._connected:
            log.error("token lost: %s", self.last_error)
        self._set_connected(False)

    def _sign_raw(self, name: str, data: bytes) -> bytes:
        self._ensure_connected()
        spec = self.keys.get(name) or self._retired.get(name)
        if spec is None or name not in self._handles:
            raise TokenError(f"no key {name} (replaced by a reload)", retryable=False)
        scheme = spec.scheme
        mechanism, param = mechanism_for(scheme)
        prepared = scheme.prepare(data)
        started = time.perf_counter()
        try:
            raw: bytes = self._handles[name].sign(
                prepared, mechanism=mechanism, mechanism_param=param
            )
        except Exception as exc:
            self._failed(exc)
            raise TokenError(f"signing failed: {describe_error(exc)}") from None
        if self.on_sign is not None:
            self.on_sign(time.perf_counter() - started)
        return scheme.finish(raw)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        self._busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._busy_since = None

    def _read_attributes(self, name: str) -> dict[str, Any]:
        self._ensure_connected()
        handle = self._handles[name]
        out = {}
        for attr in (
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
            Attribute.ALWAYS_AUTHENTICATE,
        ):
            try:
                out[attr.name.lower()] = handle[attr]
            except p11e.PKCS11Error:
                out[attr.name.lower()] = None
        return out

    def _set_keys(self, keys: list[KeySpec]) -> None:
        """Sign with ``keys`` from now on (a reload); each new one is found on the token
        first, and if one is missing nothing changes. Keys no longer listed keep their
        handles until the next reconnect, for the calls already on their way."""
        self._ensure_connected()
        found = {}
        for spec in keys:
            if self.keys.get(spec.name) == spec and spec.name in self._handles:
                continue
            try:
                found[spec.name] = _find_key(self._session_for(spec), spec)
            except (p11e.PKCS11Error, LoginRefused) as exc:
                raise TokenError(
                    f"key {spec.name}: {describe_error(exc)}", retryable=False
                ) from None
        self._retired.update(self.keys)
        self.keys = {k.name: k for k in keys}
        self._handles.update(found)

    # --- the signer process: its only thread uses the token ---------------

    def open_here(self) -> None:
        """Connect on the calling thread, which must be the only one using this Token."""
        self._next_attempt = 0.0
        self._ensure_connected()

    def sign_here(self, name: str, data: bytes) -> bytes:
        """Sign on the calling thread, which must be the only one using this Token."""
        return self._sign_raw(name, data)

    def set_keys_here(self, keys: list[KeySpec]) -> None:
        """Take another key set on the calling thread (see ``_set_keys``)."""
        self._next_attempt = 0.0
        self._set_keys(keys)

    # --- any thread -----------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.sign_timeout:
            raise TokenError("token call hung; retrying when it returns")
        return self._executor.submit(self._call, fn, *args)

    def sign_blocking(self, name: str, data: bytes) -> bytes:
        """Sign from a thread that is not the event loop (CLI commands)."""
        try:
            return self._submit(self._sign_raw, name, data).result(self.sign_timeout)
        except concurrent.futures.TimeoutError:
            raise TokenError(f"token did not answer within {self.sign_timeout:g} s") from None

    def open_blocking(self) -> None:
        """Connect now; TokenError says what failed."""
        self._next_attempt = 0.0
        self._submit(self._ensure_connected).result()

    def key_label_blocking(self, name: str) -> str | None:
        """The label of the private key found for ``name``."""
        label: str | None = self._submit(lambda: self._handles[name].label).result()
        return label

    def key_attributes_blocking(self, name: str) -> dict[str, Any]:
        return self._submit(self._read_attributes, name).result()

    async def sign(self, name: str, data: bytes) -> bytes:
        """Sign ``data`` with the key ``name``; TokenError if the token fails."""
        future = asyncio.wrap_future(self._submit(self._sign_raw, name, data))
        try:
            return await asyncio.wait_for(future, self.sign_timeout)
        except TimeoutError:
            self._connected_timeout()
            raise TokenError(f"token did not answer within {self.sign_timeout:g} s") from None

    def _connected_timeout(self) -> None:
        self.last_error = "timeout"
        self._set_connected(False)

    async def open(self) -> None:
        self._next_attempt = 0.0
        await asyncio.wrap_future(self._submit(self._ensure_connected))

    def close(self) -> None:
        """Close sessions and stop the thread (waits for a running call)."""
        try:
            self._executor.submit(self._disconnect).result(self.sign_timeout)
        except Exception:  # closing is best effort
            pass
        self._executor.shutdown(wait=False, cancel_futures=True)
