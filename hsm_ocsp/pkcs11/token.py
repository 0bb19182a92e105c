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

import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute
from pkcs11 import exceptions as p11e

from ..core.errors import TokenError
from ..core.limits import LIMITS
from .key_lookup import KeySpec, Patience, find_key
from .keys import select_token
from .login_gate import LoginGate, LoginRefused
from .mechanisms import mechanism_for
from .token_errors import DEFINITE_ERRORS, PIN_ERRORS, describe_error
from .token_info import SessionLimits, session_limits
from .token_state import TokenEvents, TokenState

__all__ = ["Token"]

log = logging.getLogger("hsm_ocsp.token")
T = TypeVar("T")
# A session the token dropped (an idle timeout, a restarted HA member): open another.
SESSION_LOST = (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.UserNotLoggedIn)
# What a busy HSM answers a call it does not take now: try the call again, shortly.
THROTTLED = (
    p11e.FunctionFailed,
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.OperationActive,
    p11e.SessionCount,
)
FIRST_PAUSE = 0.005  # seconds before the first retry of a throttled call (then doubled,
MAX_PAUSE = 0.25  # to at most this, each jittered by half)
RETRY_SHARE = 0.8  # of sign_timeout a call may spend being retried


class Token(TokenState):
    """One PKCS#11 module in this process, used from one thread."""

    def __init__(
        self,
        module: str,
        pin: str,
        keys: list[KeySpec],
        *,
        sign_timeout: float = LIMITS.sign_timeout,
        min_backoff: float = 0.25,
        max_backoff: float = 2.0,
        gate: LoginGate | None = None,
        events: TokenEvents | None = None,
    ) -> None:
        super().__init__(events)
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
        self._next_attempt = 0.0
        self._backoff = min_backoff
        self._busy_since: float | None = None
        self._lock = threading.Lock()
        # Calls ridden out since the last look (the signer process reports and resets).
        self.recovered = {"session": 0, "throttled": 0}

    def __repr__(self) -> str:  # never show the PIN
        return f"Token(module={self.module!r}, keys={sorted(self.keys)!r})"

    def algorithm_identifier(self, name: str) -> bytes:
        return self.keys[name].scheme.algorithm_identifier

    # --- token thread ---------------------------------------------------

    def _close_sessions(self) -> None:
        for session in self._sessions.values():
            try:
                session.close()
            except Exception:  # a dead session cannot be closed
                pass
        self._sessions.clear()

    def _disconnect(self) -> None:
        self._close_sessions()
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
            self._handles[spec.name] = self._found(spec)

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
        """A logged-in session; never a second try of a PIN the token refused. Read/write
        where the token allows it (AWS CloudHSM refuses read-only sessions), read-only
        where it is write-protected."""
        if self._refused is not None:
            raise LoginRefused(self._refused)
        gate = self._gate
        with gate.attempt() if gate is not None else contextlib.nullcontext():
            try:
                try:
                    return token.open(user_pin=self._pin, rw=True)
                except p11e.TokenWriteProtected:  # refused before any login was tried
                    return token.open(user_pin=self._pin, rw=False)
            except PIN_ERRORS as exc:
                reason = describe_error(exc)
                if gate is not None:
                    gate.refuse(reason)
                else:
                    self._refused = reason
                raise

    def _ensure_connected(self) -> None:
        if self._up:
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
                retryable=not isinstance(exc, DEFINITE_ERRORS),
            ) from None
        self._backoff = self._min_backoff
        self.last_error = None
        self._set_up(True)
        log.info("token connected: module %s, %d key(s)", self.module, len(self.keys))

    def _failed(self, exc: BaseException) -> None:
        self.last_error = describe_error(exc)
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._max_backoff)
        if self._up:
            log.error("token lost: %s", self.last_error)
        self._set_up(False)

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
            raw = self._sign_riding_out(name, prepared, mechanism, param)
        except Exception as exc:
            self._failed(exc)
            raise TokenError(f"signing failed: {describe_error(exc)}") from None
        self.events.token_signed(time.perf_counter() - started)
        return scheme.finish(raw)

    def _sign_riding_out(self, name: str, prepared: bytes, mechanism: Any, param: Any) -> bytes:
        """One C_Sign, riding out what hardware tokens do that is no lost token: a session
        dropped (an idle timeout: YubiHSM 2 after 30 s) is opened again, logged in, and
        the call made once more; a call refused for throttling (CloudHSM answers a busy
        HSM with CKR_FUNCTION_FAILED) is tried again after a short, jittered, growing
        pause, for at most most of ``sign_timeout``. Only what still fails then is a
        failure of the token (re-initialising a throttled HSM would make things worse)."""
        deadline = time.monotonic() + self.sign_timeout * RETRY_SHARE
        pause, reopened = FIRST_PAUSE, False
        while True:
            try:
                raw: bytes = self._handles[name].sign(
                    prepared, mechanism=mechanism, mechanism_param=param
                )
                return raw
            except SESSION_LOST:
                if reopened:
                    raise
                reopened = True
                self._reopen()
                self.recovered["session"] += 1
            except THROTTLED:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, MAX_PAUSE)
                self.recovered["throttled"] += 1

    def _found(self, spec: KeySpec) -> Any:
        """The key's object, looked up on its session, each step of the look-up waiting
        out a token that throttles look-ups (key_lookup.Patience): a throttled token is
        not a lost one, and starting over (re-initialising) would only add calls."""
        patience = Patience()
        try:
            return find_key(self._session_for(spec), spec, patience)
        finally:
            self.recovered["throttled"] += patience.retried

    def _reopen(self) -> None:
        """New logged-in sessions (the token dropped ours), and each key found on them."""
        self._close_sessions()
        for spec in [*self.keys.values(), *self._retired.values()]:
            if spec.name in self._handles:
                self._handles[spec.name] = self._found(spec)
        log.info("token session dropped by the token (an idle timeout?): opened again")

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
                found[spec.name] = self._found(spec)
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

    def keep_alive_here(self) -> None:
        """One cheap call on each open session (a signature of a few bytes with a key on
        it), so that a token that drops idle sessions keeps them; a session it dropped
        all the same is opened again. Nothing while the token is down."""
        if not self._up:
            return
        sessions: set[int] = set()
        for name, handle in list(self._handles.items()):
            if name in self.keys and id(handle.session) not in sessions:
                sessions.add(id(handle.session))
                try:
                    self._sign_raw(name, b"hsm-ocsp keep-alive")
                except TokenError:
                    return  # said and counted where it failed

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

    def session_limits_blocking(self, name: str) -> SessionLimits | None:
        """The session limits of the token that holds key ``name`` (token_info.py)."""

        def read() -> SessionLimits | None:
            slot = select_token(self._lib, self.keys[name].uri).slot.slot_id
            return session_limits(self.module, slot)

        found: SessionLimits | None = self._submit(read).result()
        return found

    def key_attributes_blocking(self, name: str) -> dict[str, Any]:
        return self._submit(self._read_attributes, name).result()

    def close(self) -> None:
        """Close sessions and stop the thread (waits for a running call)."""
        try:
            self._executor.submit(self._disconnect).result(self.sign_timeout)
        except Exception:  # closing is best effort
            pass
        self._executor.shutdown(wait=False, cancel_futures=True)
