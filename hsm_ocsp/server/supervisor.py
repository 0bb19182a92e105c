"""``hsm-ocsp serve``: run the responder in one process, or a producer and workers.

With several workers, one producer process alone opens the token and reads the
indexes (producer.py); the workers answer from the host's store and ask the producer
for the rest. Workers share the port through the kernel (``SO_REUSEPORT``): each
binds its own socket and the kernel spreads new connections over them, so no
process sits in the data path and a worker's death touches only its own
connections. Workers start once the producer's link is open (the store is then
reconciled with the indexes). The parent only forks, watches and replaces; it never
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

from ..config.handoff import accept, discard
from ..config.model import Config
from ..config.pin import take_pin
from ..config.reload import read_reloadable, unservable
from ..core.errors import EXIT_CRASHED, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, HsmOcspError
from ..pkcs11.core_dumps import forbid_core_dumps
from ..pkcs11.login_gate import LoginGate
from ..store.lmdb_store import set_aside
from ..store.state_dir import StateDirBusy, lock_state_dir
from .key_set import keys_changed, prove_new_keys
from .metrics_files import prepare_multiprocess, process_dead, remove_multiprocess_dir
from .producer import run_producer
from .producer_link import socket_path
from .replica import run_replica
from .worker import run_worker

__all__ = ["run_server"]

log = logging.getLogger("hsm_ocsp.serve")
_STARTUP_GRACE = 10.0


def _fork_child(config: Config, pin: str, gate: LoginGate, producer: bool) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = EXIT_CRASHED
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            if producer and config.edge:
                code = run_replica(config)
            elif producer:
                code = run_producer(config, pin=pin, gate=gate)
            else:  # no token in a worker: no PIN either
                code = run_worker(config, reuse_port=True, pin="", gate=None)
        except BaseException:
            log.exception("%s crashed", "producer" if producer else "worker")
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
    problem = _no_temporary_directory()
    if problem is not None:
        log.error("%s: %s", config.path, problem)
        return EXIT_USAGE
    try:  # before any worker or signer starts: none inherits it (an edge has none)
        pin = take_pin(config) if config.signing else ""
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    private = None
    if config.server.state_dir is not None:
        problem = _hold_state_dir(config.server.state_dir)
        if problem is not None:
            log.error("%s: server.state_dir: %s", config.path, problem)
            return EXIT_USAGE
    else:  # the workers share answers for this run only
        private = Path(tempfile.mkdtemp(prefix="hsm-ocsp-state-"))
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, state_dir=private)
        )
    gate = LoginGate.create()  # shared by every worker's signer: one failed login at most
    try:
        workers = config.server.workers
        if workers == 1 and config.signing:  # the one process is its own producer
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


def _hold_state_dir(state_dir: Path) -> str | None:
    """Make ``state_dir`` and lock it for this serve (the descriptor stays open, and
    inherited, until the process ends); else what is wrong, in words."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_state_dir(state_dir)
    except OSError as exc:
        return f"cannot use {state_dir}: {exc.strerror}"
    except StateDirBusy as exc:
        return (
            f"{state_dir} is in use by another hsm-ocsp serve (pid {exc.holder}); each "
            "instance needs a state directory of its own"
        )
    return None


def _no_temporary_directory() -> str | None:
    """What is wrong with the temporary directory serve needs (its login gate, the
    workers' metrics files, a state directory for the run when none is configured), or
    None: a read-only root file system without a writable /tmp is one line, not a
    traceback."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix="hsm-ocsp-probe-"))
    except OSError as exc:
        where = os.environ.get("TMPDIR") or "/tmp"
        return (
            f"TMPDIR ({where}): no writable temporary directory ({exc.strerror or exc}); "
            "give serve one (an emptyDir or tmpfs at /tmp, or TMPDIR)"
        )
    return None


def _reloaded(config: Config, pin: str, gate: LoginGate, number: int) -> Config:
    """The configuration a SIGHUP brings, or the running one if it is refused: decided
    here, once. The file is read once; a new key is proven on the token first (so that
    a worker forked later can use it); only then are the accepted bytes handed to the
    producer and the workers (config/handoff.py), which take exactly those."""
    # The last accepted reload stays in the handoff until another is accepted: a child
    # still reading it when this SIGHUP came must find it, and it is the running config.
    state_dir = config.server.state_dir
    assert state_dir is not None
    try:
        data = config.path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        log.error("reload refused, the running configuration stays: %s: %s", config.path, why)
        return config
    new = read_reloadable(config, text=text)
    if new is None:
        return config
    if new.signing and keys_changed(config, new):
        try:
            asyncio.run(prove_new_keys(new, pin, gate))
        except HsmOcspError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return config
    taken = accept(state_dir, data, number)
    log.info(
        "reload %d of %s accepted (sha256 %s); the producer and the workers take it",
        number,
        config.path,
        taken.digest[:16],
    )
    return new


def _supervise(config: Config, workers: int, pin: str, gate: LoginGate) -> int:
    return _Supervisor(config, pin, gate).run(workers)


class _Supervisor:
    """Forks the producer, then the workers; replaces one that ends, passes SIGHUP on,
    stops them all."""

    def __init__(self, config: Config, pin: str, gate: LoginGate) -> None:
        self.config = config
        self.pin = pin
        self.gate = gate
        self.children: dict[int, float] = {}  # pid -> when it was forked
        self.producer: int | None = None
        self.workers_started = False
        self.received: list[int] = []
        self.stopping = False
        self.exit_code = EXIT_OK
        self.started = time.monotonic()
        self.faults = 0  # producers in a row that a memory fault killed soon after start
        self.reloads = 0  # SIGHUPs taken: the number of the next accepted reload
        assert config.server.state_dir is not None
        self.link = socket_path(config.server.state_dir)

    def run(self, workers: int) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: self.received.append(signum))
        self.link.unlink(missing_ok=True)  # a socket of a run before is no sign of life
        assert self.config.server.state_dir is not None
        discard(self.config.server.state_dir)  # a reload a run before accepted is not ours
        self._fork(producer=True)
        while self.children:
            self._take_signals()
            if not self.workers_started and not self.stopping and self.link.exists():
                self.workers_started = True
                for _ in range(workers):
                    self._fork(producer=False)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
            elif pid in self.children:
                self._ended(pid, self.children.pop(pid), os.waitstatus_to_exitcode(status))
        return self.exit_code

    def _fork(self, *, producer: bool) -> None:
        pid = _fork_child(self.config, self.pin, self.gate, producer)
        self.children[pid] = time.monotonic()
        if producer:
            self.producer = pid

    def _take_signals(self) -> None:
        while self.received:
            if self.received.pop() == signal.SIGHUP:
                self.gate.reset()  # the operator acted: a refused login may be tried once more
                self.reloads += 1
                self.config = _reloaded(self.config, self.pin, self.gate, self.reloads)
                self._signal_all(signal.SIGHUP)
            elif not self.stopping:
                self._stop(EXIT_OK)

    def _ended(self, pid: int, born: float, code: int) -> None:
        process_dead(pid)
        what = "producer" if pid == self.producer else "worker"
        if self.stopping:
            self._stop_producer_when_alone()
            return
        # One that could not start (not one that crashed) stops the service.
        starting = what == "producer" and not self.workers_started
        if code in (EXIT_FAILURE, EXIT_USAGE) and (
            starting or time.monotonic() - self.started < _STARTUP_GRACE
        ):
            log.error("%s %d could not start; stopping", what, pid)
            self._stop(code)
            return
        log.error("%s %d ended (exit %s); starting another", what, pid, code)
        if what == "producer":
            self._crashed_at_start(born, code)
        if time.monotonic() - born < 1.0:
            time.sleep(1.0)  # one that dies at once must not spin the CPU
        self._fork(producer=what == "producer")

    def _crashed_at_start(self, born: float, code: int) -> None:
        """A producer killed by a memory fault (SIGSEGV, SIGBUS) soon after it started,
        twice in a row, is reading a damaged store: it is set aside (the fill makes a new
        one) and the workers, which map it too, are replaced."""
        faulted = -code in (signal.SIGSEGV, signal.SIGBUS) and time.monotonic() - born < 60
        self.faults = self.faults + 1 if faulted else 0
        if self.faults < 2 or self.config.server.state_dir is None:
            return
        self.faults = 0
        store = self.config.server.state_dir / "answers.lmdb"
        if store.is_dir():
            aside = set_aside(store)
            log.error(
                "the producer died twice reading %s: set aside as %s; answers are produced again",
                store,
                aside.name,
            )
        for pid in self.children:  # workers: they open the new store when replaced
            os.kill(pid, signal.SIGTERM)

    def _stop(self, code: int) -> None:
        """Workers first: the requests they finish may still need the producer."""
        self.stopping = True
        self.exit_code = code
        for pid in self.children:
            if pid != self.producer:
                os.kill(pid, signal.SIGTERM)
        self._stop_producer_when_alone()

    def _stop_producer_when_alone(self) -> None:
        if self.stopping and self.producer in self.children and len(self.children) == 1:
            os.kill(self.producer, signal.SIGTERM)
            self.producer = None  # signalled once

    def _signal_all(self, signum: int) -> None:
        for pid in self.children:
            os.kill(pid, signum)
