"""``hsm-ocsp serve``: run the responder in one or several worker processes.

Workers share the port through the kernel (``SO_REUSEPORT``): each worker
binds its own socket and the kernel spreads new connections over them, so no
process sits in the data path and a worker's death touches only its own
connections. The parent only forks, watches and replaces workers; it never
opens the token, because a PKCS#11 module must be initialised after fork.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from ..config.model import Config
from ..config.pin import forbid_core_dumps, take_pin
from ..config.reload import read_reloadable, unservable
from ..core.errors import EXIT_CRASHED, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, HsmOcspError
from ..pkcs11.key_set import keys_changed, prove_new_keys
from ..pkcs11.login_gate import LoginGate
from .metrics_files import prepare_multiprocess, process_dead, remove_multiprocess_dir
from .worker import run_worker

__all__ = ["run_server"]

log = logging.getLogger("hsm_ocsp.serve")
_STARTUP_GRACE = 10.0


def _fork_worker(config: Config, pin: str, gate: LoginGate) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = EXIT_CRASHED
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            code = run_worker(config, reuse_port=True, pin=pin, gate=gate)
        except BaseException:
            log.exception("worker crashed")
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def run_server(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    problems = unservable(config)
    if problems:  # every answer signed with it would fail validation: do not start
        log.error("%s", problems[0])
        return EXIT_USAGE
    forbid_core_dumps()
    try:
        pin = take_pin(config)  # before any worker or signer starts: none inherits it
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    private = None
    if config.server.state_dir is not None:
        try:
            config.server.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.error("%s: server.state_dir: cannot make %s: %s", config.path,
                      config.server.state_dir, exc.strerror)  # fmt: skip
            return EXIT_USAGE
    else:  # the workers share answers for this run only
        private = Path(tempfile.mkdtemp(prefix="hsm-ocsp-state-"))
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, state_dir=private)
        )
    gate = LoginGate.create()  # shared by every worker's signer: one failed login at most
    try:
        workers = config.server.workers
        if workers == 1:
            return run_worker(config, reuse_port=False, pin=pin, gate=gate)
        metrics_dir = prepare_multiprocess()  # before fork: workers sum their metrics there
        try:
            return _supervise(config, workers, pin, gate)
        finally:
            remove_multiprocess_dir(metrics_dir)
    finally:
        gate.remove()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _reloaded(config: Config, pin: str, gate: LoginGate) -> Config:
    """The configuration a SIGHUP brings, or the running one if it is refused. A new
    key is proven first on the token, so that a worker forked later can use it."""
    new = read_reloadable(config)
    if new is None or not keys_changed(config, new):
        return new or config
    try:
        asyncio.run(prove_new_keys(new, pin, gate))
    except HsmOcspError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return config
    return new


def _supervise(config: Config, workers: int, pin: str, gate: LoginGate) -> int:
    return _Supervisor(config, pin, gate).run(workers)


class _Supervisor:
    """Forks the workers, replaces one that ends, passes SIGHUP on, stops them all."""

    def __init__(self, config: Config, pin: str, gate: LoginGate) -> None:
        self.config = config
        self.pin = pin
        self.gate = gate
        self.children: dict[int, float] = {}  # pid -> when it was forked
        self.received: list[int] = []
        self.stopping = False
        self.exit_code = EXIT_OK
        self.started = time.monotonic()

    def run(self, workers: int) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: self.received.append(signum))
        for _ in range(workers):
            self._fork()
        while self.children:
            self._take_signals()
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
            elif pid in self.children:
                self._ended(pid, self.children.pop(pid), os.waitstatus_to_exitcode(status))
        return self.exit_code

    def _fork(self) -> None:
        self.children[_fork_worker(self.config, self.pin, self.gate)] = time.monotonic()

    def _take_signals(self) -> None:
        while self.received:
            if self.received.pop() == signal.SIGHUP:
                self.gate.reset()  # the operator acted: a refused login may be tried once more
                self.config = _reloaded(self.config, self.pin, self.gate)  # for later forks
                self._signal_all(signal.SIGHUP)
            elif not self.stopping:
                self._stop(EXIT_OK)

    def _ended(self, pid: int, born: float, code: int) -> None:
        process_dead(pid)
        if self.stopping:
            return
        # A worker that could not start (not one that crashed) stops the service.
        if code in (EXIT_FAILURE, EXIT_USAGE) and time.monotonic() - self.started < _STARTUP_GRACE:
            log.error("worker %d could not start; stopping", pid)
            self._stop(code)
            return
        log.error("worker %d ended (exit %s); starting another", pid, code)
        if time.monotonic() - born < 1.0:
            time.sleep(1.0)  # a worker that dies at once must not spin the CPU
        self._fork()

    def _stop(self, code: int) -> None:
        self.stopping = True
        self.exit_code = code
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for pid in self.children:
            os.kill(pid, signum)
