"""What a token says of its session limits (CK_TOKEN_INFO), which python-pkcs11 does not
expose: read with ctypes from the module the process has already initialised."""

from __future__ import annotations

import ctypes

__all__ = ["SessionLimits", "session_limits"]

_INFINITE = 0  # CK_EFFECTIVELY_INFINITE
_UNAVAILABLE = ctypes.c_ulong(-1).value  # CK_UNAVAILABLE_INFORMATION


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _TokenInfo(ctypes.Structure):  # CK_TOKEN_INFO, PKCS #11 2.40 and 3.x
    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", ctypes.c_ulong),
        ("ulMaxSessionCount", ctypes.c_ulong),
        ("ulSessionCount", ctypes.c_ulong),
        ("ulMaxRwSessionCount", ctypes.c_ulong),
        ("ulRwSessionCount", ctypes.c_ulong),
        ("ulMaxPinLen", ctypes.c_ulong),
        ("ulMinPinLen", ctypes.c_ulong),
        ("ulTotalPublicMemory", ctypes.c_ulong),
        ("ulFreePublicMemory", ctypes.c_ulong),
        ("ulTotalPrivateMemory", ctypes.c_ulong),
        ("ulFreePrivateMemory", ctypes.c_ulong),
        ("hardwareVersion", _Version),
        ("firmwareVersion", _Version),
        ("utcTime", ctypes.c_char * 16),
    ]


SessionLimits = tuple[int | None, int | None]  # (sessions, read/write sessions); None: none


def _limit(value: int) -> int | None:
    return None if value in (_INFINITE, _UNAVAILABLE) else value


class _FunctionList(ctypes.Structure):  # CK_FUNCTION_LIST: its version, then the calls
    _fields_ = [("version", _Version), ("calls", ctypes.c_void_p * 7)]


_GET_TOKEN_INFO = 6  # C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList,
# C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo
_GetTokenInfo = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_TokenInfo))


def session_limits(module: str, slot_id: int) -> SessionLimits | None:
    """ulMaxSessionCount and ulMaxRwSessionCount of the token in ``slot_id``; None if the
    module cannot say (not initialised in this process, an error). Called through the
    module's function list, as python-pkcs11 calls it (a module may export nothing else)."""
    try:
        library = ctypes.CDLL(module)  # the handle python-pkcs11 opened: initialised
        get_list = library.C_GetFunctionList
    except (OSError, AttributeError):
        return None
    get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    get_list.restype = ctypes.c_ulong
    functions = ctypes.POINTER(_FunctionList)()
    if get_list(ctypes.byref(functions)) != 0 or not functions:
        return None
    address = functions.contents.calls[_GET_TOKEN_INFO]
    if not address:
        return None
    info = _TokenInfo()
    if _GetTokenInfo(address)(slot_id, ctypes.byref(info)) != 0:
        return None
    return _limit(info.ulMaxSessionCount), _limit(info.ulMaxRwSessionCount)
