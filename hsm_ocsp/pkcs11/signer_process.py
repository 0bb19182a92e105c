"""The token in a signer process of its own, one per worker.

A signing thread next to a busy event loop must re-take the GIL a few times
for every signature and, under load, waits for it most of the time (measured:
4 % of its solo rate; benchmarks/signing_under_load.py compares both designs).
So each worker starts one child process that owns the
PKCS#11 module and does nothing but sign, on its only thread; the worker's
event loop sends it the data over a socket pair and awaits the signature. The
child has no GIL to share, and the worker never blocks on the token.

The worker side (:class:`TokenProcess`) keeps the promises the in-process
:class:`~hsm_ocsp.pkcs11.token.Token` made: a call that takes longer than
``sign_timeout`` fails with TokenError and marks the token down, and while a
call sent that long ago is still unanswered (a hung token) new calls fail at
once instead of queueing behind it. The child skips work whose caller has
given up, so a token that comes back is not kept busy with stale requests. A
child stuck in one call for two timeouts is killed, and a child that dies is
started again on the next call, at most once a second.

The PIN reaches the child over the socket, never on its command line. The
child ends when the socket closes (its worker stopped) and, through
``PR_SET_PDEATHSIG``, when its worker dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
import socket
import subprocess
import sys
import time

from ..core.errors import TokenError
from ..core.limits import LIMITS
from ..core.outbox import Outbox
from . import signer_child
from .key_lookup import LOOKUP_PATIENCE, KeySpec
from .login_gate import LoginGate
from .signer_protocol import Reply, Request, Setup, frame, take_frames
from .token_state import TokenEvents, TokenState

__all__ = ["TokenProcess"]

log = logging.getLogger("hsm_ocsp.token")
_RESTART_INTERVAL = 1.0
_STOP_WAIT = 2.0
_REPLACE_AFTER = 2  # sign timeouts a child may be stuck in one call before it is killed


class TokenProcess(TokenState):
    """The worker's handle on its signer process; the interface of Token."""

    # The same parameters as Token's: a TokenProcess stands in for a Token.
    def __init__(
        self,
        module: str,
        pin: str,
        keys: list[KeySpec],
        *,
        sign_timeout: float = LIMITS.sign_timeout,
        log_format: str = "text",  # [server] log_format's default
        gate: LoginGate | None = None,
        keepalive: float = 0.0,
        events: TokenEvents | None = None,
    ) -> None:
        super().__init__(events)
        self.module = module
        self.keys = {k.name: k for k in keys}
        self._retired: dict[str, KeySpec] = {}
        self.sign_timeout = sign_timeout
        self.gate = gate
        self._setup = Setup(
            module,
            pin,
            keys,
            sign_timeout,
            log_format,
            logging.getLogger().getEffectiveLevel(),
            None if gate is None else str(gate.directory),
            keepalive,
        )
        self._child: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._sent: dict[int, float] = {}  # id -> its deadline, until the child answers
        self._next_id = 0
        self._next_start = 0.0
        self._outbox: Outbox | None = None  # the requests of a turn of the loop, sent at its end

    def __repr__(self) -> str:  # never show the PIN
        return f"TokenProcess(module={self.module!r}, keys={sorted(self.keys)!r})"

    def algorithm_identifier(self, name: str) -> bytes:
        spec = self.keys.get(name) or self._retired[name]  # retired: signed before a reload
        return spec.scheme.algorithm_identifier

    @property
    def pid(self) -> int | None:
        """The signer process's PID while one runs."""
        return self._child.pid if self._child is not None else None

    # --- the child ------------------------------------------------------

    async def _start(self) -> None:
        now = time.monotonic()
        if now < self._next_start:
            raise TokenError(f"token unavailable ({self.last_error}); retrying soon")
        self._next_start = now + _RESTART_INTERVAL
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors: a token fault of the moment
            raise TokenError(f"cannot start the signer process: {exc.strerror}") from None
        try:
            self._child = subprocess.Popen(
                # -I: the working directory (and PYTHON* variables) never reach its
                # import path, so nothing planted there runs beside the PIN.
                [sys.executable, "-I", "-m", signer_child.__name__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise TokenError(f"cannot start the signer process: {exc.strerror}") from None
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._writer.write(frame(self._setup))
        self._outbox = Outbox(self._writer)
        self._reader_task = asyncio.create_task(self._read_replies(reader, self._child))

    async def _read_replies(
        self, reader: asyncio.StreamReader, child: subprocess.Popen[bytes]
    ) -> None:
        buffer = bytearray()
        try:
            while chunk := await reader.read(1 << 16):
                buffer += chunk
                for reply in take_frames(buffer):
                    self._answered(reply)
        except ConnectionError:
            pass
        finally:
            self._ended(child)

    def _answered(self, reply: Reply) -> None:
        call_id, payload, ok, retryable, seconds, up, last_error, recovered = reply
        self._sent.pop(call_id, None)
        if any(recovered):
            self.events.token_recovered(*recovered)
        self.last_error = last_error
        self._set_up(up)
        if seconds is not None:
            self.events.token_signed(seconds)
        future = self._waiting.pop(call_id, None)
        if future is None or future.done():
            return
        if ok:
            assert isinstance(payload, bytes)
            future.set_result(payload)
        else:
            assert isinstance(payload, str)
            future.set_exception(TokenError(payload, retryable=retryable))

    def _ended(self, child: subprocess.Popen[bytes]) -> None:
        """The child's socket closed: fail what it held and forget it."""
        if self._child is not child:
            return
        try:
            code = child.wait(0.2)  # a child that closed its socket is ending
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        self._child = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._sent.clear()
        if self._outbox is not None:
            self._outbox.clear()  # not for the next child: their callers are failed here
            self._outbox = None
        error = TokenError(f"signer process ended (exit {code})")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        if self._up:
            log.error("signer process %d ended (exit %s)", child.pid, code)
        self.last_error = f"signer process ended (exit {code})"
        self._set_up(False)

    # --- calls ------------------------------------------------------------

    async def _call(self, name: str | None, data: bytes, timeout: float | None = None) -> bytes:
        """One call in the child; ``timeout``: its bound (a sign's, ``sign_timeout``, by
        default; an open may take longer: its look-ups wait out a throttled token)."""
        now = time.monotonic()
        timeout = self.sign_timeout if timeout is None else timeout
        if self._sent:
            overdue = now - min(self._sent.values())
            if overdue > 0:  # the oldest call is past its bound: the child is stuck
                self._replace_if_stuck(overdue + self.sign_timeout)
                raise TokenError("token call hung; retrying when it returns")
        if self._child is None:
            await self._start()
        assert self._outbox is not None
        self._next_id += 1
        call_id = self._next_id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._waiting[call_id] = future
        self._sent[call_id] = now + timeout
        request: Request = (call_id, now + timeout, name, data)
        self._outbox.write(frame(request))
        timer = loop.call_later(timeout, _time_out, future)
        try:
            return await future
        except TimeoutError:
            self.last_error = "timeout"
            self._set_up(False)
            raise TokenError(f"token did not answer within {timeout:g} s") from None
        finally:
            timer.cancel()
            self._waiting.pop(call_id, None)

    def _replace_if_stuck(self, stuck: float) -> None:
        """Kill a child stuck in one call for several timeouts; the next call starts another.

        A thread stuck in C_Sign can only be waited for; a process can be
        replaced, and a fresh session often works where the old one hangs.
        """
        child = self._child
        if child is None or stuck < _REPLACE_AFTER * self.sign_timeout:
            return
        log.error(
            "signer process %d stuck in a token call for %.1f s; replacing it", child.pid, stuck
        )
        child.kill()  # its socket closes: _read_replies fails its calls and forgets it

    async def open(self) -> None:
        """Connect now; TokenError says what failed."""
        self._next_start = 0.0
        await self._call(None, b"", self.sign_timeout + LOOKUP_PATIENCE)

    async def sign(self, name: str, data: bytes) -> bytes:
        """Sign ``data`` with the key ``name``; TokenError if the token fails."""
        return await self._call(name, data)

    @property
    def waiting(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._waiting)

    def take_keys_at_start(self, keys: list[KeySpec]) -> None:
        """Sign with ``keys`` once the child starts (again): it is not running now."""
        self.keys = {k.name: k for k in keys}
        self._setup = dataclasses.replace(self._setup, keys=keys)

    async def set_keys(self, keys: list[KeySpec]) -> None:
        """Sign with ``keys`` from now on (a reload). The child finds each new key on
        the token first; if one is missing, TokenError and the running keys stay.
        Calls already sent are signed with the keys they name."""
        keyset = pickle.dumps(keys, protocol=pickle.HIGHEST_PROTOCOL)
        await self._call(None, keyset, self.sign_timeout + LOOKUP_PATIENCE)
        self._retired.update(self.keys)
        self.keys = {k.name: k for k in keys}
        self._setup = dataclasses.replace(self._setup, keys=keys)  # for a restarted child

    async def aclose(self) -> None:
        """Stop the child: close its socket, then wait for it (or kill it)."""
        child, self._child = self._child, None
        self._outbox = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if child is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, child.wait, _STOP_WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
            await loop.run_in_executor(None, child.wait)


def _time_out(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


# --- in the child ---------------------------------------------------------
