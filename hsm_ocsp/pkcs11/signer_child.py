"""The signer process itself: it owns the PKCS#11 module and does nothing but sign, on
its only thread, for the worker at the other end of its socket. It ends when the
socket closes and, through PR_SET_PDEATHSIG, when its worker dies."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..core.errors import TokenError
from .core_dumps import forbid_core_dumps
from .login_gate import LoginGate
from .signer_protocol import FrameReader, Reply, Request, Setup, frame
from .token import Token
from .token_state import NoTokenEvents

log = logging.getLogger("hsm_ocsp.token")
_PR_SET_PDEATHSIG = 1
_HOLD = 0.002  # seconds a reply may wait for those signed after it


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Timed(NoTokenEvents):
    """The seconds of each C_Sign, gathered to go back with the reply."""

    def __init__(self, into: list[float]) -> None:
        self._into = into

    def token_signed(self, seconds: float) -> None:
        self._into.append(seconds)


def _serve(sock: socket.socket) -> None:
    frames = FrameReader(sock)
    first = frames.batch() or [None]
    setup = first[0]
    if not isinstance(setup, Setup):
        return
    from ..core.logs import setup_logging

    setup_logging(setup.log_format, setup.log_level)
    gate = None if setup.gate is None else LoginGate(Path(setup.gate))
    signed: list[float] = []  # the seconds of C_Sign alone, as in the worker
    token = Token(
        setup.module,
        setup.pin,
        setup.keys,
        sign_timeout=setup.sign_timeout,
        gate=gate,
        events=_Timed(signed),
    )
    requests: list[Any] | None = first[1:]
    while requests is not None:
        # The replies to what arrived together go back together (one send, one
        # wake-up of the caller) until gathering them has taken _HOLD: a slow
        # token's replies go back one by one, as each is signed.
        replies: list[bytes] = []
        held_since = time.monotonic()
        for request in requests:
            replies.append(frame(_answer(token, request, signed)))
            if time.monotonic() - held_since > _HOLD:
                sock.sendall(b"".join(replies))
                replies.clear()
                held_since = time.monotonic()
        if replies:
            sock.sendall(b"".join(replies))
        requests = _next_batch(frames, sock, token, setup.keepalive)


def _next_batch(
    frames: FrameReader, sock: socket.socket, token: Token, keepalive: float
) -> list[Any] | None:
    """The next requests; while none comes for ``keepalive`` seconds (when set), the
    token's sessions are kept open (Token.keep_alive_here)."""
    while keepalive > 0 and not frames.complete():
        if select.select([sock], [], [], keepalive)[0]:
            break
        token.keep_alive_here()
    return frames.batch()


def _answer(token: Token, request: Request, signed: list[float]) -> Reply:
    call_id, deadline, name, data = request
    signed.clear()
    if time.monotonic() > deadline:  # the caller has given up: skip
        return (call_id, "expired", False, False, None, token.up, token.last_error, (0, 0))
    try:
        if name is None and data:
            token.set_keys_here(pickle.loads(data))
            payload: bytes | str = b""
        elif name is None:
            token.open_here()
            payload = b""
        else:
            payload = token.sign_here(name, data)
        ok, retryable = True, False
    except TokenError as exc:
        payload, ok, retryable = str(exc), False, exc.retryable
    seconds = signed[0] if signed else None
    recovered = (token.recovered["session"], token.recovered["throttled"])
    token.recovered.update(session=0, throttled=0)
    return (call_id, payload, ok, retryable, seconds, token.up, token.last_error, recovered)


def _quiet_finalizer(unraisable: Any) -> None:
    """python-pkcs11 ends a search in a finalizer (C_FindObjectsFinal); after a search the
    token refused (a throttled look-up) that call fails too, and Python would print a
    traceback for it. One debug line instead: the look-up's own failure is handled."""
    log.debug("ignored in a finalizer: %r", unraisable.exc_value)


def child_main(argv: list[str]) -> int:
    """``python -m hsm_ocsp.pkcs11.signer_process FD``: sign for the worker on FD."""
    _die_with_parent()
    forbid_core_dumps()  # it is about to hold the PIN (PR_SET_DUMPABLE resets on exec)
    # The worker decides when to stop: a SIGTERM or Ctrl-C sent to the whole group
    # (systemctl stop) must not take signatures from requests it is still answering.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.unraisablehook = _quiet_finalizer
    sock = socket.socket(fileno=int(argv[0]))
    try:
        _serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    # Through the package's module, not __main__: the setup message was pickled
    # with hsm_ocsp.pkcs11.signer_child's classes.
    from hsm_ocsp.pkcs11.signer_child import child_main as main

    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: a dead token's finalizer could hang
