"""PKCS#11 failures in words: the CKR_ name, a hint for the ones seen on real tokens, and
which failures another attempt cannot mend. Never the PIN."""

from __future__ import annotations

import re

from pkcs11 import exceptions as p11e

from .login_gate import LoginRefused

# Failures that another attempt cannot mend; a wrong PIN must not be retried
# because every attempt counts towards the token's lock-out.
# A login refused for one of these stops all logins (see login_gate.py).
PIN_ERRORS = (
    p11e.PinIncorrect,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.PinInvalid,
    p11e.PinLenRange,
)


DEFINITE_ERRORS = (
    *PIN_ERRORS,
    LoginRefused,
    p11e.NoSuchKey,
    p11e.MultipleObjectsReturned,
    p11e.MultipleTokensReturned,
)


# Failures with a sentence of their own, most specific first.
_WORDS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (p11e.PinIncorrect, "login failed: the PIN is incorrect"),
    (p11e.PinLocked, "login failed: the PIN is locked"),
    (p11e.PinExpired, "login failed: the PIN has expired"),
    (
        (p11e.PinInvalid, p11e.PinLenRange),
        "login failed: the token refuses this PIN's characters or length",
    ),
    (p11e.NoSuchToken, "no such token"),
    (p11e.NoSuchKey, "no such private key"),
    (
        p11e.MultipleObjectsReturned,
        "the URI matches more than one private key; add id= or object=",
    ),
    (p11e.MultipleTokensReturned, "several tokens match; add token= to the URI"),
)


def describe_error(exc: BaseException) -> str:
    """A PKCS#11 failure in words; never includes the PIN."""
    for kinds, words in _WORDS:
        if isinstance(exc, kinds):
            return words
    if isinstance(exc, LoginRefused):
        return f"login not tried: earlier {exc}; fix the PIN, then SIGHUP or restart"
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
